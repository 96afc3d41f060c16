"""Identity: users, service accounts, login sessions and refresh tokens."""
