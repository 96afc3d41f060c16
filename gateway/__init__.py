"""The REST/JSON gateway: HTTP requests transcoded to the gRPC methods by their google.api.http rules."""
