# The default authorization policy. Input schema v1 and the decision's shape: policies/README.md.
# Teams, their models and tools live in data.json beside this file (data.lattice).
package lattice.authz

import rego.v1

team := data.lattice.teams[input.principal.team]

is_admin if data.lattice.admin_role in input.principal.roles

# The principal's team as a string ("" when absent or not a string). Read through this rule, not
# object.get or sprintf on input.principal: on a null principal those raise an error in OPA but
# are undefined in regorus, and an undefined reason would let the call through.
team_name := t if {
	t := input.principal.team
	is_string(t)
} else := ""

# --- Denials: each rule adds a reason; any reason denies. ---------------------------------

# An anonymous call (no identity gate configured, or a caller from a test harness) is denied:
# every rule below decides about a principal.
reasons contains "the call has no identified principal" if not has_principal

# A helper rule, not `not is_object(input.principal)`: with no principal field at all, OPA and
# regorus disagree on a negated call whose argument is undefined; a negated rule they agree on.
has_principal if is_object(input.principal)

reasons contains msg if {
	has_principal
	not is_admin
	not team
	msg := sprintf("team %q has no access to models", [team_name])
}

# Role-based model access: a team may call the models it lists: exact names, or prefixes ending
# in `*` (the gateway's own route patterns).
reasons contains msg if {
	not is_admin
	team
	not model_allowed
	msg := sprintf("team %q may not use model %q", [input.principal.team, input.request.model])
}

# An exact name, or a prefix pattern. Prefix matching with startswith, not glob.match: same
# result for these patterns, and a glob is compiled on every call (it tripled the decision
# time); written inline rather than as a function, which saves a call per pattern.
model_allowed if input.request.model in team.models

model_allowed if {
	some pattern in team.models
	endswith(pattern, "*")
	startswith(input.request.model, trim_suffix(pattern, "*"))
}

# Tool allow-list: every tool offered to the model must be allowed for the team: by name, or by
# a pattern `prefix*` (`*` alone: any tool, for general-purpose teams whose coding agents offer
# their own tool sets, Claude Code's `Bash`, `Read`, `Edit`, ..., Codex CLI's `shell`, ...).
reasons contains msg if {
	not is_admin
	team
	some tool in object.get(input.request, "tools", [])
	not tool in object.get(team, "tools", [])
	not tool in pattern_tools
	msg := sprintf("tool %q is not allowed for team %q", [tool, input.principal.team])
}

# The offered tools a pattern of the team admits.
pattern_tools contains tool if {
	some tool in object.get(input.request, "tools", [])
	is_string(tool)
	some pattern in object.get(team, "tools", [])
	endswith(pattern, "*")
	startswith(tool, trim_suffix(pattern, "*"))
}

# An attribute rule: some teams work in business hours only (UTC, Monday to Friday, 08-18).
reasons contains "this team may call models in business hours only (Mon-Fri 08:00-18:00 UTC)" if {
	not is_admin
	object.get(team, "business_hours_only", false)
	not business_hours
}

business_hours if {
	not input.time.weekday in {"Saturday", "Sunday"}
	input.time.hour >= 8
	input.time.hour < 18
}

# --- Obligations for the later gates. -----------------------------------------------------

# Model lock: a locked team's calls go to its model, whatever they ask for.
# (Written as whole-object rules rather than `obligations["model"] := ...`: regorus compiles these
# to its faster VM, which does not take partial object rules yet.)
lock := {"model": team.lock_model} if {
	not is_admin
	team.lock_model
} else := {}

# The tools the team may offer, and the model may call: the tool gate refuses (or filters) the
# others in requests and removes (or blocks) the model's calls of them in answers.
tools := {"allowed_tools": team.tools} if {
	not is_admin
	team.tools
} else := {}

# Model lock: the team reaches its models only, also where a route renames a model upstream
# (the gateway checks the model actually sent too).
models := {"model_lock": {"models": team.models}} if {
	not is_admin
	team.models
} else := {}

# Delegation: agents of one team may write into each other's sessions (each reads only its own
# records there; the owner reads all). Another team's session stays refused.
sessions := {"session_shared": true} if {
	has_principal
	owner := input.request.session_owner
	is_object(owner)
	owner.team == team_name
	team_name != ""
} else := {}

obligations := object.union(object.union(object.union(lock, tools), models), sessions)

# --- The decision. --------------------------------------------------------------------------

default allow := false

allow if count(reasons) == 0

decision := {"allow": allow, "reasons": reasons, "obligations": obligations}
