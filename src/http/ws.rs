//! Subscriptions over a WebSocket on `/graphql`, in the graphql-transport-ws protocol
//! (<https://github.com/enisdenjo/graphql-ws/blob/master/PROTOCOL.md>), which graphql-ws, urql
//! and Apollo's `GraphQLWsLink` speak.
//!
//! Our own loop rather than async-graphql's, so that each fault closes the socket with the code
//! the protocol gives it, and so that a socket is bounded:
//!
//! | what happened | answer |
//! |---|---|
//! | no `connection_init` within `--connection-init-timeout-secs` | close 4408 |
//! | a message that is not JSON of the protocol, or binary | close 4400 |
//! | `subscribe` before the server's `connection_ack` | close 4401 |
//! | `connection_init` refused (no key or token, unknown or revoked key, bad token, another origin) | close 4403 |
//! | the key is revoked while the socket is open (checked every `--api-key-cache-secs`) | close 4403 |
//! | the token expires while the socket is open (checked as often) | close 4403 |
//! | `subscribe` with the id of a running subscription | close 4409 |
//! | a second `connection_init`, or one past a rate (failing credentials, the caller's own) | close 4429 |
//! | `subscribe` past `--max-subscriptions-per-socket` | `error` for that id, TOO_MANY_SUBSCRIPTIONS |
//! | an operation refused before it runs (limits, validation, not a subscription) | `error` for that id |
//! | the server shuts down | close 1001 |
//!
//! The socket takes a message at most `--max-body-bytes` long. Each subscription's events go
//! out in order; while the client reads slowly, its subscriptions fall behind the change feed,
//! and one too far behind ends with SUBSCRIBER_TOO_SLOW rather than skipping changes silently.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::parser::types::OperationType;
use async_graphql::{Request, ServerError};
use axum::extract::FromRequestParts;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::stream::{BoxStream, SelectAll};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::analysis::{Refusal, analyze, select};
use super::credentials::{self, Presented};
use super::graphql::{Refuse, Unparsed, parse_bounded, request_of, with_code};
use super::{AppState, cors, scan, trusted};
use crate::auth::Caller;

/// The one subprotocol spoken; a client that offers no other is closed with 4406.
const PROTOCOL: &str = "graphql-transport-ws";

/// Upgrades to a socket that serves subscriptions. The key or token comes in the
/// `connection_init` payload (`{"X-API-Key": KEY}`, `{"apiKey": KEY}` or `{"Authorization":
/// "Bearer KEY-OR-TOKEN"}`), or as a header of the upgrade request.
pub(super) async fn subscribe(state: Arc<AppState>, mut parts: axum::http::request::Parts) -> Response {
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let upgrade = upgrade
        .protocols([PROTOCOL])
        .max_message_size(state.limits.max_body_bytes)
        .max_frame_size(state.limits.max_body_bytes);
    let spoken = upgrade.selected_protocol().is_some();
    // A page on an origin no tenant allows cannot open a socket (cross-site WebSocket
    // hijacking); one that some tenant allows is checked against its own at connection_init.
    let origin = cors::cross_origin(&parts.headers).map(str::to_owned);
    if let Some(origin) = &origin {
        match state.tenants.snapshot().await {
            Ok(snapshot) if snapshot.allows_any(origin) => {}
            Ok(_) => return (StatusCode::FORBIDDEN, "This page's origin may not open a socket.").into_response(),
            Err(err) => {
                tracing::warn!(error = %err, "could not read the tenants' origins");
                return (StatusCode::SERVICE_UNAVAILABLE, "Try again later.").into_response();
            }
        }
    }
    let connection = Connection {
        // tokio's interval refuses a zero period.
        recheck: state.api_key_cache.max(Duration::from_millis(100)),
        state: state.clone(),
        headers: std::mem::take(&mut parts.headers),
        origin,
        peer: super::Peer::address(&parts.extensions),
    };
    let lifecycle = state.lifecycle.clone();
    upgrade.on_upgrade(move |socket| {
        let closing = lifecycle.shutdown.child_token();
        lifecycle.sockets.track_future(async move {
            if spoken {
                connection.serve(socket, closing).await;
            } else {
                close(socket, 4406, "Subprotocol not acceptable: use graphql-transport-ws").await;
            }
        })
    })
}

async fn close(mut socket: WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

/// What a socket needs of the server and of its upgrade request.
struct Connection {
    state: Arc<AppState>,
    /// The upgrade request's headers, which may carry the key or token.
    headers: axum::http::HeaderMap,
    /// The page's origin, when it is another than the gateway's.
    origin: Option<String>,
    /// The client's address, whose failed credentials are counted.
    peer: Option<std::net::IpAddr>,
    /// How often the caller is checked again: its key's revocation, its token's expiry.
    recheck: Duration,
}

/// A message from the client.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    ConnectionInit {
        #[serde(default)]
        payload: Option<Value>,
    },
    Ping {},
    Pong {},
    Subscribe {
        id: String,
        /// A GraphQL request, its document sent or named by id.
        payload: Value,
    },
    Complete {
        id: String,
    },
}

/// A message to the client.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerMessage<'a> {
    ConnectionAck,
    Pong,
    Next {
        id: &'a str,
        payload: &'a async_graphql::Response,
    },
    Error {
        id: &'a str,
        payload: &'a [ServerError],
    },
    Complete {
        id: &'a str,
    },
}

/// An event of one subscription: `Some` response, or `None` when its stream ended. The
/// number tells this subscription from an earlier one with the same id.
type Event = (String, u64, Option<async_graphql::Response>);

/// What one socket has going on.
#[derive(Default)]
struct SocketState {
    /// Set once the key in `connection_init` was accepted.
    session: Option<Session>,
    /// Running subscriptions: id → its number and what ends it.
    running: HashMap<String, (u64, CancellationToken)>,
    events: SelectAll<BoxStream<'static, Event>>,
    /// Subscriptions started, which numbers each.
    started: u64,
}

/// A socket's state once the key or token in `connection_init` was accepted.
struct Session {
    data: Arc<async_graphql::Data>,
    caller: Caller,
}

/// What to do after a message.
enum Next {
    Go,
    Close(u16, String),
}

impl Connection {
    async fn serve(self, socket: WebSocket, closing: CancellationToken) {
        let (mut sink, mut incoming) = socket.split();
        let mut state = SocketState::default();
        let init_deadline = tokio::time::sleep(self.state.limits.connection_init_timeout());
        tokio::pin!(init_deadline);
        let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + self.recheck, self.recheck);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let outcome: Next = loop {
            let mut out: Vec<String> = Vec::new();
            let next = tokio::select! {
                () = closing.cancelled() => Next::Close(close_code::AWAY, "the server is shutting down".to_owned()),
                () = &mut init_deadline, if state.session.is_none() => {
                    Next::Close(4408, "Connection initialisation timeout".to_owned())
                }
                _ = recheck.tick(), if state.session.is_some() => match &state.session {
                    Some(session) => self.still_valid(&session.caller).await,
                    None => Next::Go,
                },
                message = incoming.next() => match message {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break Next::Go,
                    Some(Ok(Message::Text(text))) => {
                        self.on_text(text.as_str(), &mut state, &mut out).await
                    }
                    Some(Ok(Message::Binary(_))) => Next::Close(4400, "Binary messages are not part of graphql-transport-ws".to_owned()),
                    Some(Ok(_)) => Next::Go,
                },
                Some((id, number, response)) = state.events.next(), if !state.events.is_empty() => {
                    on_event(&id, number, response, &mut state.running, &mut out);
                    Next::Go
                }
            };
            for text in out {
                if sink.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
            if let Next::Close(..) = next {
                break next;
            }
        };
        for (_, (_, stop)) in state.running {
            stop.cancel();
        }
        if let Next::Close(code, reason) = outcome {
            let frame = CloseFrame {
                code,
                reason: shortened(&reason).into(),
            };
            let _ = sink.send(Message::Close(Some(frame))).await;
        }
        let _ = sink.close().await;
    }

    /// Closes with 4403 once the key is revoked (asked of the database, not the key cache) or
    /// the token expired.
    async fn still_valid(&self, caller: &Caller) -> Next {
        let key_id = match caller {
            Caller::Key(principal) => principal.key_id,
            Caller::Person(person) => {
                return match crate::jwt::expired(person) {
                    false => Next::Go,
                    true => Next::Close(4403, "Forbidden: the token expired".to_owned()),
                };
            }
        };
        match self.state.keys.revoked(key_id).await {
            Ok(false) => Next::Go,
            Ok(true) => Next::Close(4403, "Forbidden: the API key was revoked".to_owned()),
            Err(err) => {
                tracing::warn!(error = %err, "could not check a socket's API key; checking again later");
                Next::Go
            }
        }
    }

    async fn on_text(&self, text: &str, state: &mut SocketState, out: &mut Vec<String>) -> Next {
        let SocketState {
            session,
            running,
            events,
            started,
        } = state;
        let message = match serde_json::from_str::<ClientMessage>(text) {
            Ok(message) => message,
            Err(err) => return Next::Close(4400, format!("Invalid message: {err}")),
        };
        match message {
            ClientMessage::ConnectionInit { payload } => {
                // The key is checked before the next message is read: a refused one closes the
                // socket, so only an accepted one can be followed by another connection_init.
                if session.is_some() {
                    return Next::Close(4429, "Too many initialisation requests".to_owned());
                }
                match self.authenticate(&payload.unwrap_or_default()).await {
                    Ok(new) => {
                        *session = Some(new);
                        out.extend(to_text(&ServerMessage::ConnectionAck));
                        Next::Go
                    }
                    Err(refused) => {
                        let code = match refused.status() {
                            StatusCode::TOO_MANY_REQUESTS => 4429,
                            _ => 4403,
                        };
                        Next::Close(code, format!("Forbidden: {}", refused.message()))
                    }
                }
            }
            ClientMessage::Ping {} => {
                out.extend(to_text(&ServerMessage::Pong));
                Next::Go
            }
            ClientMessage::Pong {} => Next::Go,
            ClientMessage::Complete { id } => {
                if let Some((_, stop)) = running.remove(&id) {
                    stop.cancel();
                }
                Next::Go
            }
            ClientMessage::Subscribe { id, payload } => {
                let Some(session) = session else {
                    return Next::Close(4401, "Unauthorized".to_owned());
                };
                if running.contains_key(&id) {
                    return Next::Close(4409, format!("Subscriber for {} already exists", shortened(&id)));
                }
                let request = if running.len() >= self.state.limits.max_subscriptions_per_socket {
                    Err(refusal(
                        "TOO_MANY_SUBSCRIPTIONS",
                        "This socket runs as many subscriptions as it may; complete one or open another socket.",
                    ))
                } else if let Err(flaw) = scan::json_numbers(text.as_bytes()) {
                    let (code, message) = flaw.refusal();
                    Err(refusal(code, &message))
                } else {
                    request_of(payload, self.state.trusted.as_deref())
                        .map_err(|refused| refusal(refused.code(), refused.message()))
                };
                let request = match request {
                    Ok(request) => request,
                    Err(error) => {
                        out.extend(to_text(&ServerMessage::Error {
                            id: &id,
                            payload: &[error],
                        }));
                        return Next::Go;
                    }
                };
                *started += 1;
                let number = *started;
                let stop = CancellationToken::new();
                let ended = (id.clone(), number, None);
                let tag = id.clone();
                let stream = self
                    .execute(request, session)
                    .take_until(stop.clone().cancelled_owned())
                    .map(move |response| (tag.clone(), number, Some(response)))
                    .chain(futures::stream::once(async move { ended }))
                    .boxed();
                events.push(stream);
                running.insert(id, (number, stop));
                Next::Go
            }
        }
    }

    /// The session `connection_init`'s key or token opens, or why there is none: checked as
    /// HTTP checks a request's ([`credentials`]).
    async fn authenticate(&self, payload: &Value) -> Result<Session, Refuse> {
        let presented = presented_in(payload).or_else(|| Presented::in_headers(&self.headers));
        let caller = credentials::authenticate(&self.state, presented, self.peer, self.origin.as_deref()).await?;
        let mut data = async_graphql::Data::default();
        data.insert(caller.tenant());
        if let Some(person) = caller.person() {
            data.insert(person.clone());
        }
        Ok(Session {
            data: Arc::new(data),
            caller,
        })
    }

    /// Runs a subscription after the same limits as HTTP: queries and mutations over the
    /// socket would skip the HTTP edge's checks, so they are sent to HTTP.
    fn execute(&self, mut request: Request, session: &Session) -> BoxStream<'static, async_graphql::Response> {
        let limits = &self.state.limits;
        let refuse = |code: &str, message: &str| {
            let response = async_graphql::Response::from_errors(vec![refusal(code, message)]);
            futures::stream::once(async move { response }).boxed()
        };
        if request.query.len() > limits.max_document_bytes {
            return refuse("DOCUMENT_TOO_LARGE", "The GraphQL document is too large.");
        }
        if session.caller.person().is_some()
            && let Some(trusted) = &self.state.trusted
            && !trusted.holds(&request.query)
        {
            return refuse("DOCUMENT_NOT_TRUSTED", trusted::NOT_TRUSTED);
        }
        let document = match parse_bounded(&request.query, limits.max_nesting) {
            Ok(document) => document,
            Err(Unparsed::Flaw(flaw)) => {
                let (code, message) = flaw.refusal();
                return refuse(code, &message);
            }
            Err(Unparsed::Syntax(message)) => return refuse("GRAPHQL_PARSE_FAILED", &message),
        };
        if let Some(operation) = select(&document, request.operation_name.as_deref()) {
            if operation.ty != OperationType::Subscription {
                return refuse(
                    "BAD_REQUEST",
                    "Only subscriptions run over the WebSocket; send queries and mutations as HTTP POST requests.",
                );
            }
            match analyze(&self.state.index, limits, &document, operation, &request.variables) {
                Ok(_) => {}
                Err(Refusal::Limit { code, message }) => return refuse(code, message),
                Err(Refusal::Invalid(message)) => return refuse("GRAPHQL_VALIDATION_FAILED", &message),
            }
        }
        request.set_parsed_query(document);
        async_graphql::Executor::execute_stream(&self.state.schema, request, Some(session.data.clone()))
    }
}

/// Turns a subscription's event into what the client is sent: `next` for a response with
/// data, `error` for one refused before it ran or ended by a fault (its stream then stops),
/// `complete` when the stream ended by itself.
fn on_event(
    id: &str,
    number: u64,
    response: Option<async_graphql::Response>,
    running: &mut HashMap<String, (u64, CancellationToken)>,
    out: &mut Vec<String>,
) {
    // An event of a subscription the client completed, or of an earlier one with this id.
    if running.get(id).is_none_or(|(current, _)| *current != number) {
        return;
    }
    match response {
        Some(mut response) if response.data == async_graphql::Value::Null && !response.errors.is_empty() => {
            if let Some((_, stop)) = running.remove(id) {
                stop.cancel();
            }
            // Refused before it ran: async-graphql's own errors are validation's.
            with_code(&mut response.errors, "GRAPHQL_VALIDATION_FAILED");
            out.extend(to_text(&ServerMessage::Error {
                id,
                payload: &response.errors,
            }));
        }
        Some(response) => out.extend(to_text(&ServerMessage::Next { id, payload: &response })),
        None => {
            running.remove(id);
            out.extend(to_text(&ServerMessage::Complete { id }));
        }
    }
}

fn refusal(code: &str, message: &str) -> ServerError {
    let mut extensions = async_graphql::ErrorExtensionValues::default();
    extensions.set("code", code);
    let mut error = ServerError::new(message, None);
    error.extensions = Some(extensions);
    error
}

fn to_text(message: &ServerMessage<'_>) -> Option<String> {
    serde_json::to_string(message)
        .inspect_err(|err| tracing::error!(%err, "a WebSocket message could not be written"))
        .ok()
}

/// `reason` cut to what a close frame holds (123 bytes), at a character boundary.
fn shortened(reason: &str) -> &str {
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// The key or token in a `connection_init` payload, under any of the names clients use.
fn presented_in(payload: &Value) -> Option<Presented<'_>> {
    let object = payload.as_object()?;
    let headers = object.get("headers").and_then(Value::as_object);
    [Some(object), headers].into_iter().flatten().find_map(|fields| {
        fields.iter().find_map(|(name, value)| {
            let value = value.as_str()?;
            match name.to_ascii_lowercase().as_str() {
                "x-api-key" | "apikey" | "api_key" => Some(Presented::Key(value.trim())),
                "authorization" => Presented::bearer(value),
                _ => None,
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_key_or_token_is_found_under_any_name_clients_use() {
        let key = "pgw_0123456789abcdef_s";
        for payload in [
            json!({"X-API-Key": key}),
            json!({"apiKey": key}),
            json!({"headers": {"Authorization": format!("Bearer {key}")}}),
        ] {
            assert_eq!(presented_in(&payload), Some(Presented::Key(key)), "{payload}");
        }
        let token = json!({"Authorization": "Bearer a.b.c"});
        assert_eq!(presented_in(&token), Some(Presented::Token("a.b.c")));
        assert_eq!(presented_in(&json!({"Authorization": "Basic k"})), None);
    }

    #[test]
    fn a_close_reason_is_cut_at_a_character_boundary() {
        let long = "é".repeat(100);
        let cut = shortened(&long);
        assert!(cut.len() <= 120 && cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn client_messages_of_the_protocol_parse_and_others_do_not() {
        let parses = |text: &str| serde_json::from_str::<ClientMessage>(text).is_ok();
        assert!(parses(r#"{"type":"connection_init"}"#));
        assert!(parses(r#"{"type":"ping","payload":{"a":1}}"#));
        assert!(parses(
            r#"{"type":"subscribe","id":"1","payload":{"query":"subscription { a }"}}"#
        ));
        assert!(parses(r#"{"type":"complete","id":"1"}"#));
        assert!(!parses(r#"{"type":"start","id":"1","payload":{"query":"{ a }"}}"#));
        assert!(!parses(r#"{"type":"subscribe","payload":{"query":"{ a }"}}"#));
        assert!(!parses("not json"));
    }
}
