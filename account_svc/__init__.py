"""Customer accounts: domain rules, persistence, use cases and the gRPC servicer."""
