"""Who is calling: the authentication middleware and allow-list (`auth.py`) and ID-token
verification against Google's or an OIDC issuer's keys (`tokens.py`)."""
