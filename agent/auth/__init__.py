"""Authentication logic of the local API: passwords, sessions, API keys, tickets, throttling.

Nothing here speaks HTTP: `agent.api` turns these results into responses, and `agent.admin_cli`
uses the same code for the first admin, so both paths hash, check and audit identically.
"""
