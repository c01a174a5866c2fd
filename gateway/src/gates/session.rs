//! The session gate: a session belongs to the principal that created it (the principal of its
//! first record). A call that names a session another principal owns is refused (403
//! `session_forbidden`, in the client's dialect) unless the policy lets it in (the
//! `session_shared` obligation: delegation between agents, which the shipped bundle allows
//! within a team). So a second tenant can neither write its records into someone else's session
//! nor, by naming a session first, make another's calls land where it can read them: the other's
//! call is refused instead.
//!
//! Two steps around the authorization gate: [`SessionOwner`] (before it) finds who owns the
//! session, for the policy input's `request.session_owner`; [`SessionAccess`] (after it) refuses
//! the call unless the caller owns the session or the policy shared it.

use std::sync::Arc;

use http::StatusCode;

use super::{Call, Denial, Gate};

/// The owner of a session the caller does not own, as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub id: String,
    pub user: String,
    pub team: String,
}

pub const NAME: &str = "session";

/// The code of the refusal: its decision record is kept out of the session it names.
pub const FORBIDDEN: &str = "session_forbidden";

pub struct SessionOwner(pub Arc<lattice_audit::AuditLog>);

impl Gate for SessionOwner {
    fn name(&self) -> &'static str {
        "session_owner"
    }

    fn check(&self, call: &mut Call<'_>) -> Result<(), Denial> {
        let caller = call.principal.as_deref().map_or("", |p| p.id.as_str());
        // A new session (this call creates it, for its principal), or the caller's own.
        if self.0.session_owned_by(call.session, caller) != Some(false) {
            return Ok(());
        }
        let Some((owner, _)) = self.0.session_info(call.session) else {
            return Ok(());
        };
        // Another principal's session (rare: read the owner's first record for its team).
        let first = self
            .0
            .session_events(call.session, 0, 1)
            .ok()
            .and_then(|r| r.into_iter().next());
        let who = first
            .and_then(|r| serde_json::from_slice::<serde_json::Value>(&r.event.payload).ok())
            .map(|v| v["principal"].clone())
            .unwrap_or_default();
        let field = |k: &str| who[k].as_str().unwrap_or_default().to_string();
        call.session_owner = Some(Owner {
            id: owner,
            user: field("user"),
            team: field("team"),
        });
        Ok(())
    }
}

pub struct SessionAccess;

impl Gate for SessionAccess {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check(&self, call: &mut Call<'_>) -> Result<(), Denial> {
        if call.session_owner.is_none() || call.session_shared {
            return Ok(());
        }
        Err(Denial {
            gate: NAME,
            code: FORBIDDEN,
            status: StatusCode::FORBIDDEN,
            message: "the session belongs to another principal: name a session of your own, or none (one is assigned)"
                .into(),
            retry_after: None,
        })
    }
}
