"""One interceptor for the whole chain: each concern's per-call work in one wrapper per method.

The concerns keep their own modules (tracing, observability, errors, auth, rate_limit,
validation); each exposes a stage object the pipeline calls, and `Pipeline` composes them in
the one order Tally uses, outermost first:

    tracing        a SERVER span per call, current while the rest runs
    observability  metrics and one access-log record, with the call's final status
    errors         domain errors (and malformed requests) become statuses with details
    auth           the principal admitted by the method's policy, current for the handler
    rate_limit     tokens taken from the principal's (else the address's) bucket
    text_policy    every string of a unary request checked before the handler (a function
                   raising core.errors.InvalidArgument: interceptors.validation.check_request)

A stage left out (None/False) costs nothing. The wrapped handler for a method is built once,
the first time the method is called, with everything that depends only on the method
precomputed (policy, rate group and cost, span name and attributes, metric children); later
calls of the method get the same handler back from a dict. Per call, the wrapper does each
present stage's work in the order above, with the same semantics the six separate
interceptors had: the status the client sees (interceptors._rpc.finish_code), the deadline
margin, the error details, the log fields and metric labels.

Handler kinds keep their shape, as interceptors._rpc explains: coroutine functions (unary
answers and `context.write` streams) stay coroutine functions, async generators stay
generators. A synchronous behaviour is left alone unless auth or rate limiting is in the
pipeline, which refuse it with UNIMPLEMENTED (they must not be bypassed); Tally has none.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from interceptors._rpc import KINDS, CallState, MalformedRequest, MethodNames, safe_deserializer

if TYPE_CHECKING:
    from interceptors.auth import AuthStage
    from interceptors.errors import ErrorStage
    from interceptors.observability import ObservabilityStage
    from interceptors.rate_limit import RateLimitStage
    from interceptors.tracing import TracingStage

# Handlers are cached by method name; a generic handler that answers any name cannot grow it past this.
_MAX_CACHED_METHODS = 10_000

Behavior = Callable[..., Any]


async def _refused(_request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "synchronous handlers are not supported")


class Pipeline(grpc.aio.ServerInterceptor):
    """The chain as one `grpc.aio.ServerInterceptor`; pass the stages to use (see the module doc)."""

    def __init__(
        self,
        *,
        tracing: TracingStage | None = None,
        observability: ObservabilityStage | None = None,
        errors: ErrorStage | None = None,
        auth: AuthStage | None = None,
        rate_limit: RateLimitStage | None = None,
        text_policy: Callable[[Any], None] | None = None,
    ) -> None:
        self._tracing = tracing
        self._observability = observability
        self._errors = errors
        self._auth = auth
        self._rate_limit = rate_limit
        self._text_policy = text_policy
        self._handlers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            if self._observability is not None:
                self._observability.unknown_method(handler_call_details)
            return None
        method = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self.wrap(method, handler)
        if len(self._handlers) < _MAX_CACHED_METHODS or method in self._handlers:
            self._handlers[method] = (handler, wrapped)
        return wrapped

    def wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """`handler` with every stage around it (built once per method; see intercept_service)."""
        found = next(((getattr(handler, name), make) for name, make in KINDS if getattr(handler, name)), None)
        if found is None:
            return handler
        behavior, make = found
        plan = _Plan(self, MethodNames.of(full_method), handler.request_streaming, behavior)
        if plan.nothing_to_do:
            return handler
        wrapped = plan.generator() if inspect.isasyncgenfunction(plan.behavior) else plan.coroutine()
        deserializer = safe_deserializer(handler.request_deserializer, handler.request_streaming)
        return make(wrapped, deserializer, handler.response_serializer)


class _Plan:
    """What the pipeline does for one method, decided once."""

    def __init__(self, pipeline: Pipeline, names: MethodNames, request_streaming: bool, behavior: Behavior):
        full = names.full_method
        self.names = names
        self.behavior = behavior
        enforced = pipeline._auth is not None or pipeline._rate_limit is not None
        synchronous = not (inspect.isasyncgenfunction(behavior) or inspect.iscoroutinefunction(behavior))
        self.refuses = synchronous and enforced
        self.nothing_to_do = False
        if synchronous and not enforced:
            self.nothing_to_do = True  # left alone: grpc.aio runs it in its thread pool
            return
        if self.refuses:
            self.behavior = _refused
        self.tracing = pipeline._tracing.for_method(names) if pipeline._tracing is not None else None
        self.observing = (
            pipeline._observability.for_method(names) if pipeline._observability is not None else None
        )
        self.errors = pipeline._errors
        self.auth = pipeline._auth
        self.policy = pipeline._auth.policy(full) if pipeline._auth is not None else None
        # A refused synchronous handler is not charged or checked (as before: nothing ran it).
        self.rate = (
            pipeline._rate_limit.for_method(full)
            if pipeline._rate_limit is not None and not self.refuses
            else None
        )
        self.rate_limit = pipeline._rate_limit if self.rate is not None else None
        text = pipeline._text_policy
        self.text = text if text is not None and not request_streaming and not self.refuses else None
        self.nothing_to_do = (
            self.tracing is None
            and self.observing is None
            and self.errors is None
            and self.auth is None
            and self.rate is None
            and self.text is None
        )

    async def admit(self, request: Any, context: grpc.aio.ServicerContext, call: CallState) -> object | None:
        """Everything between error mapping and the handler; returns the principal's reset token."""
        if self.errors is not None and isinstance(request, MalformedRequest):
            await self.errors.malformed(context, request, self.names.full_method)
        token = None
        if self.auth is not None:
            token = await self.auth.admit(self.names.full_method, self.policy, call.metadata, request)
        try:
            if self.rate_limit is not None and self.rate is not None:
                await self.rate_limit.charge(self.rate, context, call.metadata)
            if self.text is not None:
                self.text(request)
        except BaseException:
            if token is not None:
                self.auth.release(token)  # type: ignore[union-attr]
            raise
        return token

    def coroutine(self) -> Behavior:
        behavior = self.behavior
        tracing, observing, errors, auth = self.tracing, self.observing, self.errors, self.auth
        names = self.names
        admit = self.admit

        async def pipeline(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = CallState(names, context)
            span = tracing.start(call) if tracing is not None else None
            observed = observing.start(call) if observing is not None else None
            try:
                try:
                    token = await admit(request, context, call)
                    try:
                        response = await behavior(request, context)
                    finally:
                        if token is not None:
                            auth.release(token)  # type: ignore[union-attr]
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    if errors is None:
                        raise
                    await errors.abort(context, exc, names.full_method)
            except BaseException as exc:
                call.finish(exc)
                raise
            else:
                call.finish(None)
                return response
            finally:
                if observing is not None:
                    observing.finish(call, observed)
                if tracing is not None:
                    tracing.end(call, span)

        return pipeline

    def generator(self) -> Behavior:
        behavior = self.behavior
        tracing, observing, errors, auth = self.tracing, self.observing, self.errors, self.auth
        names = self.names
        admit = self.admit

        async def pipeline(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = CallState(names, context)
            span = tracing.start(call) if tracing is not None else None
            observed = observing.start(call) if observing is not None else None
            try:
                try:
                    token = await admit(request, context, call)
                    try:
                        async for response in behavior(request, context):
                            yield response
                    finally:
                        if token is not None:
                            auth.release(token)  # type: ignore[union-attr]
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    if errors is None:
                        raise
                    await errors.abort(context, exc, names.full_method)
            except BaseException as exc:
                call.finish(exc)
                raise
            else:
                call.finish(None)
            finally:
                if observing is not None:
                    observing.finish(call, observed)
                if tracing is not None:
                    tracing.end(call, span)

        return pipeline
