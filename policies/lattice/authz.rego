# The default authorization policy. Input schema v1 and the decision's shape: policies/README.md.
# Teams, their models and tools live in data.json beside this file (data.lattice).
package lattice.authz

import rego.v1

team := data.lattice.teams[input.principal.team]

is_admin if data.lattice.admin_role in input.principal.roles

# --- Denials: each rule adds a reason; any reason denies. ---------------------------------

reasons contains msg if {
	not is_admin
	not team
	msg := sprintf("team %q has no access to models", [object.get(input.principal, "team", "")])
}

# Role-based model access: a team may call the models it lists (`*` is a wildcard).
reasons contains msg if {
	not is_admin
	team
	not model_allowed
	msg := sprintf("team %q may not use model %q", [input.principal.team, input.request.model])
}

model_allowed if {
	some pattern in team.models
	glob.match(pattern, [], input.request.model)
}

# Tool allow-list: every tool offered to the model must be allowed for the team.
reasons contains msg if {
	not is_admin
	team
	some tool in object.get(input.request, "tools", [])
	not tool in object.get(team, "tools", [])
	msg := sprintf("tool %q is not allowed for team %q", [tool, input.principal.team])
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
obligations["model"] := team.lock_model if {
	not is_admin
	team.lock_model
}

obligations["allowed_tools"] := team.tools if {
	not is_admin
	team.tools
}

# --- The decision. --------------------------------------------------------------------------

default allow := false

allow if count(reasons) == 0

decision := {"allow": allow, "reasons": reasons, "obligations": obligations}
