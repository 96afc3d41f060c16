"""gRPC server interceptors, one concern each; core.server composes them in order."""
