"""gRPC server interceptors, one concern each; app.server composes them in order."""
