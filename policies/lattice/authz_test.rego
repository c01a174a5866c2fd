# Unit tests of the default policy: `lattice policy test policies/` (like `opa test`).
package lattice.authz_test

import data.lattice.authz
import rego.v1

weekday := {"weekday": "Tuesday", "hour": 10}

weekend := {"weekday": "Sunday", "hour": 10}

call(team, roles, model, tools, time) := {
	"version": 1,
	"principal": {"id": "p1", "kind": "api_key", "user": "u1", "team": team, "roles": roles, "attributes": {}},
	"request": {"surface": "chat.completions", "model": model, "provider": "openai", "tools": tools},
	"time": time,
}

test_team_may_use_its_models if {
	d := authz.decision with input as call("research", [], "gpt-4o", [], weekday)
	d.allow
	count(d.reasons) == 0
}

test_team_may_not_use_other_models if {
	d := authz.decision with input as call("support", [], "claude-3-5-sonnet", [], weekday)
	not d.allow
	d.reasons == {"team \"support\" may not use model \"claude-3-5-sonnet\""}
}

test_unknown_team_is_denied if {
	d := authz.decision with input as call("nobody", [], "demo", [], weekday)
	not d.allow
}

test_admin_may_use_anything if {
	d := authz.decision with input as call("nobody", ["admin"], "anything", ["rm_rf"], weekend)
	d.allow
	d.obligations == {}
}

test_model_lock_is_an_obligation if {
	d := authz.decision with input as call("support", [], "gpt-4o-mini", [], weekday)
	d.allow
	d.obligations.model == "gpt-4o-mini"
	d.obligations.allowed_tools == []
	d.obligations.model_lock == {"models": ["gpt-4o-mini", "demo"]}
}

test_disallowed_tool_is_denied if {
	d := authz.decision with input as call("research", [], "gpt-4o", ["web_search", "shell"], weekday)
	not d.allow
	d.reasons == {"tool \"shell\" is not allowed for team \"research\""}
}

test_allowed_tools_pass if {
	d := authz.decision with input as call("research", [], "gpt-4o", ["web_search", "calculator"], weekday)
	d.allow
}

test_business_hours_rule if {
	authz.decision.allow with input as call("finance", [], "demo", [], weekday)
	not authz.decision.allow with input as call("finance", [], "demo", [], weekend)
	not authz.decision.allow with input as call("finance", [], "demo", [], {"weekday": "Monday", "hour": 19})
}

test_other_teams_ignore_business_hours if {
	authz.decision.allow with input as call("research", [], "demo", [], weekend)
}

# Fail closed on inputs without a usable principal (a null principal used to be an allow in
# regorus: the differential test against OPA found it).
test_anonymous_call_is_denied if {
	d := authz.decision with input as object.union(call("research", [], "demo", [], weekday), {"principal": null})
	not d.allow
	d.reasons == {"the call has no identified principal"}
}

test_missing_principal_is_denied if {
	d := authz.decision with input as object.remove(call("research", [], "demo", [], weekday), {"principal"})
	not d.allow
}

test_null_team_is_denied if {
	d := authz.decision with input as call(null, [], "demo", [], weekday)
	not d.allow
	d.reasons == {"team \"\" has no access to models"}
}

in_session(team, owner_team) := object.union(call(team, [], "demo", [], weekday), {"request": {
	"surface": "chat.completions", "model": "demo", "provider": "mock", "tools": [],
	"session": "s-1", "session_owner": {"id": "p0", "user": "u0", "team": owner_team},
}})

test_a_teams_agents_share_sessions if {
	d := authz.decision with input as in_session("research", "research")
	d.allow
	d.obligations.session_shared == true
}

test_another_teams_session_is_not_shared if {
	d := authz.decision with input as in_session("research", "support")
	not d.obligations.session_shared
}

test_an_own_or_new_session_needs_no_sharing if {
	d := authz.decision with input as call("research", [], "demo", [], weekday)
	not d.obligations.session_shared
}
