"""Per-user access to patient data: the users and their tokens, the roles, the policy that decides each
read, and break-glass (emergency access beyond a role, time-limited, always audited)."""
