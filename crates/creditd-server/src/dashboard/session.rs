//! Signing in with an account token, the session cookie, CSRF tokens and
//! signing out.
//!
//! `GET /dashboard?token=ct_…` checks the token like the API does, stores a
//! new session (only the SHA-256 of its secret `cs_<id>_<64 hex>`), sets it
//! as an `HttpOnly; SameSite=Strict; Path=/dashboard` cookie (`Secure` when
//! `server.public_url` is https) and sends the browser to the same page
//! without the token. A session lives [`SESSION_TTL`]; it ends earlier when
//! it is revoked (sign out, `DELETE /v1/accounts/{id}/sessions`) or when the
//! token it was made from is revoked. The CSRF token of a session is a hash
//! of its secret: only a holder of the cookie can know it, and nothing more
//! is stored.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use creditd_store::{Command, DashboardSession, Reply};
use jiff::SignedDuration;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::html::{self, esc};
use super::{PageError, html_response};
use crate::auth::{Caller, hash_secret};
use crate::state::AppState;

pub const COOKIE: &str = "creditd_session";
const SESSION_PREFIX: &str = "cs_";
/// How long a session lasts after signing in.
pub const SESSION_TTL: SignedDuration = SignedDuration::from_hours(12);

/// A signed-in browser.
#[derive(Clone, Debug)]
pub struct Session {
    pub id: String,
    pub account_id: String,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
}

fn csrf_of(secret: &str) -> String {
    hex::encode(Sha256::digest(format!("creditd-dashboard-csrf\0{secret}").as_bytes()))
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    for value in headers.get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            if let Some((name, value)) = pair.trim().split_once('=')
                && name == COOKIE
                && !value.is_empty()
            {
                return Some(value.to_string());
            }
        }
    }
    None
}

fn secret_id(secret: &str) -> Option<&str> {
    let rest = secret.strip_prefix(SESSION_PREFIX)?;
    let (id, random) = rest.split_once('_')?;
    (!id.is_empty() && random.len() == 64 && id.len() <= 64).then_some(id)
}

/// The `Set-Cookie` of a session (`max_age` 0 clears it).
fn set_cookie(state: &AppState, value: &str, max_age: i64) -> HeaderValue {
    let secure = if super::config(state).secure_cookies() { "; Secure" } else { "" };
    let text = format!("{COOKIE}={value}; Path=/dashboard; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("creditd_session=; Max-Age=0"))
}

/// The page for a browser without a (valid) session: `401`.
pub fn signed_out_page(state: &AppState, headline: &str, text: &str) -> Response {
    let body = format!(
        "<section class=\"card narrow\"><h1>{}</h1><p>{}</p>\
         <p>Open the dashboard link you were given again, or ask for a new one: \
         it signs this browser in for up to 12 hours.</p></section>",
        esc(headline),
        esc(text)
    );
    let mut response = html_response(StatusCode::UNAUTHORIZED, html::page(headline, None, &body));
    response.headers_mut().append(header::SET_COOKIE, set_cookie(state, "", 0));
    response
}

impl Session {
    /// The session of the request's cookie, or the `401` page.
    pub async fn from_headers(state: &AppState, headers: &HeaderMap) -> Result<Session, Response> {
        let Some(secret) = cookie_value(headers) else {
            return Err(signed_out_page(state, "You are not signed in", "This browser has no dashboard session."));
        };
        let expired = || signed_out_page(state, "Your session has ended", "It expired, was signed out or revoked.");
        let Some(id) = secret_id(&secret) else { return Err(expired()) };
        let stored = state.store.dashboard_session(id).await.map_err(|e| PageError::from(e).into_response())?;
        let Some(stored) = stored else { return Err(expired()) };
        let presented = hash_secret(&secret);
        if !bool::from(presented.as_bytes().ct_eq(stored.secret_hash.as_bytes())) {
            return Err(expired());
        }
        if stored.revoked_at.is_some() || stored.expires_at <= state.clock.now() {
            return Err(expired());
        }
        Ok(Session { id: stored.id, account_id: stored.account_id, csrf: csrf_of(&secret) })
    }

    /// Whether a form's `csrf` field is this session's (constant time).
    pub fn csrf_ok(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(self.csrf.as_bytes())))
    }
}

/// `GET /dashboard?token=…`: a new session from an account token.
pub async fn sign_in(state: &AppState, headers: &HeaderMap, token: &str) -> Response {
    let bad =
        || signed_out_page(state, "This link does not work", "The link is not valid, has expired or was revoked.");
    if token.len() > 512 {
        return bad();
    }
    let account_id = match state.authenticate_secret(token).await {
        Ok(Caller::Account(id)) => id,
        Ok(_) | Err(_) => return bad(),
    };
    // `ct_<token id>_<random>`: the token the session was made from.
    let Some(token_id) = token.strip_prefix("ct_").and_then(|r| r.split_once('_')).map(|(id, _)| id.to_string()) else {
        return bad();
    };
    let id = uuid::Uuid::now_v7().simple().to_string();
    let secret = format!("{SESSION_PREFIX}{id}_{}", crate::auth::random_hex());
    let now = state.clock.now();
    let Ok(expires_at) = now.checked_add(SESSION_TTL) else { return bad() };
    let session = DashboardSession {
        id,
        account_id,
        token_id,
        secret_hash: hash_secret(&secret),
        created_at: now,
        expires_at,
        revoked_at: None,
    };
    match state.store.execute(Command::CreateSession { session }, None).await {
        Ok(Reply::Session(_)) => {}
        Ok(_) => return PageError::internal("unexpected reply").into_response(),
        Err(creditd_store::StoreError::Refused(_)) => return bad(),
        Err(e) => return PageError::from(e).into_response(),
    }
    // A navigation that came from another site (a link in an email) may not
    // carry a SameSite=Strict cookie through a redirect: such a browser gets
    // a page that moves on by itself (a same-site navigation), every other
    // one a plain redirect. Neither URL holds the token any more.
    let cross_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()).is_some_and(|v| v == "cross-site");
    let mut response = if cross_site {
        let body = "<section class=\"card narrow\"><h1>Signed in</h1>\
                    <p><a href=\"/dashboard\">Continue to your dashboard</a></p></section>";
        let page = html::page("Signed in", None, body).replacen(
            "<head>",
            "<head><meta http-equiv=\"refresh\" content=\"0;url=/dashboard\">",
            1,
        );
        html_response(StatusCode::OK, page)
    } else {
        (StatusCode::SEE_OTHER, [(header::LOCATION, HeaderValue::from_static("/dashboard"))]).into_response()
    };
    let max_age = SESSION_TTL.as_secs();
    response.headers_mut().append(header::SET_COOKIE, set_cookie(state, &secret, max_age));
    response
}

/// `POST /dashboard/logout`: revokes the session and clears the cookie.
pub async fn sign_out(state: &AppState, session: &Session) -> Response {
    let command =
        Command::RevokeSessions { account_id: session.account_id.clone(), session_id: Some(session.id.clone()) };
    if let Err(e) = state.store.execute(command, None).await {
        return PageError::from(e).into_response();
    }
    let body = "<section class=\"card narrow\"><h1>Signed out</h1>\
                <p>This browser is signed out of the dashboard. Open your dashboard link again to sign back in.</p>\
                </section>";
    let mut response = html_response(StatusCode::OK, html::page("Signed out", None, body));
    response.headers_mut().append(header::SET_COOKIE, set_cookie(state, "", 0));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=b; creditd_session=cs_x_y; c=d"));
        assert_eq!(cookie_value(&h).as_deref(), Some("cs_x_y"));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("creditd_session="));
        assert_eq!(cookie_value(&h), None);
    }

    #[test]
    fn session_secrets_split_into_their_id() {
        let random = "a".repeat(64);
        assert_eq!(secret_id(&format!("cs_abc_{random}")), Some("abc"));
        assert_eq!(secret_id("cs_abc_short"), None);
        assert_eq!(secret_id(&format!("ct_abc_{random}")), None);
    }

    #[test]
    fn csrf_tokens_differ_per_session() {
        assert_ne!(csrf_of("cs_a_1"), csrf_of("cs_a_2"));
        let s = Session { id: "a".into(), account_id: "u".into(), csrf: csrf_of("cs_a_1") };
        assert!(s.csrf_ok(Some(&csrf_of("cs_a_1"))));
        assert!(!s.csrf_ok(Some(&csrf_of("cs_a_2"))));
        assert!(!s.csrf_ok(None));
    }
}
