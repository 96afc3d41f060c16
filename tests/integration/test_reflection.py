"""Server reflection as v1 and v1alpha, from raw clients: grpcurl 1.8 asks v1alpha, newer tools v1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from app.modules import SERVICES
from app.server import App

V1 = "grpc.reflection.v1.ServerReflection"
V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
V1_MESSAGES = {
    "ServerReflectionRequest",
    "ExtensionRequest",
    "ServerReflectionResponse",
    "FileDescriptorResponse",
    "ExtensionNumberResponse",
    "ListServiceResponse",
    "ServiceResponse",
    "ErrorResponse",
}


@pytest.fixture
async def channel(app: App) -> AsyncIterator[grpc.aio.Channel]:
    """Anonymous: reflection needs no token."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield channel


async def v1alpha(channel: grpc.aio.Channel, **request: Any) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = [
        r async for r in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(**request)]))
    ]
    assert len(replies) == 1
    return replies[0]


async def v1_file(channel: grpc.aio.Channel) -> descriptor_pb2.FileDescriptorProto:
    """The file that declares the v1 service, as the server describes it."""
    reply = await v1alpha(channel, file_containing_symbol=V1)
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in reply.file_descriptor_response.file_descriptor_proto
    ]
    return next(file for file in files if file.package == "grpc.reflection.v1")


class V1Client:
    """A v1 client whose messages are built from the descriptor the server published."""

    def __init__(self, channel: grpc.aio.Channel, file: descriptor_pb2.FileDescriptorProto):
        pool = descriptor_pool.DescriptorPool()
        pool.Add(file)
        self.request = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest")
        )
        response = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse")
        )
        self._call = channel.stream_stream(
            f"/{V1}/ServerReflectionInfo",
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=response.FromString,
        )

    async def ask(self, **request: Any) -> Any:
        replies = [r async for r in self._call(iter([self.request(**request)]))]
        assert len(replies) == 1
        return replies[0]


async def test_v1alpha_lists_every_service_and_both_reflection_versions(channel: grpc.aio.Channel) -> None:
    reply = await v1alpha(channel, list_services="")
    listed = {service.name for service in reply.list_services_response.service}
    assert {s.full_name for s in SERVICES} | {"grpc.health.v1.Health", V1, V1ALPHA} == listed


async def test_the_v1_service_is_described_as_v1(channel: grpc.aio.Channel) -> None:
    file = await v1_file(channel)
    assert file.name == "grpc/reflection/v1/reflection.proto"
    assert {message.name for message in file.message_type} == V1_MESSAGES
    (service,) = file.service
    (method,) = service.method
    assert (service.name, method.name) == ("ServerReflection", "ServerReflectionInfo")
    assert method.client_streaming and method.server_streaming
    assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    type_names = {
        field.type_name for message in file.message_type for field in message.field if field.type_name
    }
    assert type_names and all(name.startswith(".grpc.reflection.v1.") for name in type_names)


async def test_v1_answers_listing_symbols_and_errors(channel: grpc.aio.Channel) -> None:
    client = V1Client(channel, await v1_file(channel))
    listed = await client.ask(list_services="")
    assert {s.full_name for s in SERVICES} | {"grpc.health.v1.Health", V1, V1ALPHA} == {
        service.name for service in listed.list_services_response.service
    }

    found = await client.ask(file_containing_symbol="tally.account.v1.AccountService")
    names = [
        descriptor_pb2.FileDescriptorProto.FromString(raw).name
        for raw in found.file_descriptor_response.file_descriptor_proto
    ]
    assert names[0] == "tally/account/v1/account.proto"
    assert "google/api/annotations.proto" in names  # with what it imports

    missing = await client.ask(file_by_filename="no/such.proto")
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert missing.original_request.file_by_filename == "no/such.proto"
