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
	d := authz.decision with input as call("analysts", [], "gpt-4o", ["web_search", "shell"], weekday)
	not d.allow
	d.reasons == {"tool \"shell\" is not allowed for team \"analysts\""}
}

test_allowed_tools_pass if {
	d := authz.decision with input as call("analysts", [], "gpt-4o", ["web_search", "calculator"], weekday)
	d.allow
	d.obligations.allowed_tools == ["web_search", "calculator", "code_interpreter"]
}

# What the common coding agents offer: a general-purpose team takes them all, a restricted one none.
claude_code_tools := [
	"Task", "Bash", "Glob", "Grep", "LS", "ExitPlanMode", "Read", "Edit", "MultiEdit", "Write",
	"NotebookEdit", "WebFetch", "TodoWrite", "WebSearch", "BashOutput", "KillShell", "Agent",
	"mcp__github__create_issue",
]

codex_tools := ["shell", "apply_patch", "update_plan", "view_image", "local_shell", "web_search"]

test_a_general_purpose_team_runs_coding_agents if {
	every tools in [claude_code_tools, codex_tools, ["transfer_to_billing_agent", "get_weather"]] {
		d := authz.decision with input as call("research", [], "claude-sonnet-4-5", tools, weekday)
		d.allow
		d.obligations.allowed_tools == ["*"]
	}
}

test_a_restricted_team_gets_no_coding_agent_tools if {
	d := authz.decision with input as call("support", [], "gpt-4o-mini", ["Bash", "Read"], weekday)
	not d.allow
	count(d.reasons) == 2
}

test_a_tool_pattern_is_a_prefix if {
	d := authz.decision with input as object.union(call("analysts", [], "demo", ["web_search_v2"], weekday),
		{"principal": {"team": "analysts"}})
	not d.allow
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
