//! The tool gate: a request may offer the model only the tools the policy allows its principal
//! (the `allowed_tools` obligation: exact names and `prefix*` patterns). Others are refused
//! (403 `tool_not_allowed`, naming the tool) or taken out of the request (`[tools] offered =
//! "filter"`). The answer side (a model calling a tool it was not offered) is the response
//! filter's: `content::filter`.

use http::StatusCode;

use super::{Call, Denial, Gate};
use crate::content::tools::{Offered, ToolsConfig, filter_request};

pub struct ToolGate(pub ToolsConfig);

impl Gate for ToolGate {
    fn name(&self) -> &'static str {
        "tools"
    }

    fn check(&self, call: &mut Call<'_>) -> Result<(), Denial> {
        if call.allowed_tools.is_none() {
            return Ok(());
        }
        // The tool rule applies to this body: it must read one way only (a filtered body is
        // re-read whole; a duplicate `tools` would be read differently upstream).
        call.check_body(self.name())?;
        let Some(allowed) = &call.allowed_tools else {
            return Ok(());
        };
        let refused: Vec<&str> = call
            .view
            .tools
            .iter()
            .map(|t| t.as_ref())
            .filter(|t| !allowed.allows(t))
            .collect();
        let Some(first) = refused.first() else {
            return Ok(());
        };
        match self.0.offered {
            Offered::Refuse => Err(Denial {
                gate: "tools",
                code: "tool_not_allowed",
                status: StatusCode::FORBIDDEN,
                message: format!("the tool `{first}` is not allowed for this caller").into(),
                retry_after: None,
            }),
            Offered::Filter => {
                let body = call.rewritten_body.as_deref().unwrap_or(call.body);
                if let Some(b) = filter_request(body, allowed) {
                    call.rewritten_body = Some(b.into());
                }
                call.tools_removed = refused.iter().map(|t| Box::from(*t)).collect();
                Ok(())
            }
        }
    }
}
