"""Responses requests to engine calls, and engine output to responses and their typed stream events.

An answer is a list of output items: a `message` item per run of text and a `function_call` item
(`fc_…`, its `call_id` `call_…`) per call, in the order the model produced them. The whole answer and
the stream are built by one `_Items` from the same answer parts, so they cannot disagree. Tool calls
go through the same constraint plans and `Assembler` as the chat and Messages APIs.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any, Literal, cast

from fastapi import Request

from inference_server.calls import (
    Assembler,
    CallError,
    Closed,
    Events,
    Fragment,
    Ledger,
    Mode,
    Opened,
    Part,
    Text,
    canonical,
    json_answer,
    parsed_arguments,
    parts,
    plan,
    tool_spec,
)
from inference_server.engines.base import ChatMessage, EngineError, SamplingParams, ToolCall, ToolSpec
from inference_server.errors import ApiError
from inference_server.generation import ChatPrompt, Outcome
from inference_server.responses import protocol as p
from inference_server.responses.store import stored
from inference_server.runtime import Runtime
from inference_server.streaming import EventStream, sse, unless_disconnected
from inference_server.toolcalls import ConstraintPlan

_ROLES: dict[str, Literal["system", "user", "assistant"]] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
}
_TEXT_PARTS = {"input_text", "output_text", "text"}


def flatten(content: str | list[p.InputContent]) -> str:
    """Text parts joined; images, files and audio become a short marker the model can read."""
    if isinstance(content, str):
        return content
    return "\n".join(
        part.text
        if part.type in _TEXT_PARTS
        else part.refusal
        if part.type == "refusal"
        else f"[{part.type}]"
        for part in content
    )


def to_messages(input_: str | list[p.InputItem], prior: Sequence[ChatMessage]) -> list[ChatMessage]:
    """This request's turns. A function_call item joins the assistant turn just before it (Responses
    splits one turn into items); a function_call_output must answer a call made earlier, in `prior`
    (a previous response's conversation) or in this input."""
    if isinstance(input_, str):
        return [ChatMessage("user", input_)]
    ledger = Ledger()
    for call in (call for message in prior for call in message.tool_calls):
        ledger.record(call)
    turns: list[ChatMessage] = []
    for i, item in enumerate(input_):
        if isinstance(item, p.MessageItem):
            turns.append(ChatMessage(_ROLES[item.role], flatten(item.content)))
        elif isinstance(item, p.FunctionCallItem):
            call = ToolCall(
                item.call_id, item.name, parsed_arguments(item.arguments, f"input[{i}].arguments")
            )
            ledger.record(call)
            if turns and turns[-1].role == "assistant":
                turns[-1] = replace(turns[-1], tool_calls=(*turns[-1].tool_calls, call))
            else:
                turns.append(ChatMessage("assistant", "", (call,)))
        elif isinstance(item, p.FunctionCallOutputItem):
            name = ledger.answered(item.call_id, f"input[{i}]")
            turns.append(ChatMessage("tool", flatten(item.output), tool_call_id=item.call_id, name=name))
    if not turns and not prior:
        raise ApiError(
            "invalid_request", "input: no message, function_call or function_call_output to answer"
        )
    return turns


def tool_choice(request: p.ResponsesRequest) -> tuple[Mode, str]:
    """OpenAI's default: `auto` with tools, `none` without."""
    choice = request.tool_choice
    if isinstance(choice, p.NamedFunction):
        return "named", choice.name
    if choice is None:
        return ("auto" if request.tools else "none"), ""
    return cast(Mode, choice), ""


def answer_format(text: p.TextConfig | None) -> ConstraintPlan | None:
    form = text.format if text is not None else None
    if isinstance(form, p.JsonObjectFormat):
        return json_answer(None, "text.format")
    if isinstance(form, p.JsonSchemaFormat):
        return json_answer(form.schema_ or {}, "text.format.schema")
    return None


def constraint(request: p.ResponsesRequest) -> tuple[tuple[ToolSpec, ...], ConstraintPlan | None]:
    """The tools the model is shown and what its answer is held to."""
    specs = [
        tool_spec(tool.name, tool.description or "", tool.parameters, f"tools[{i}].parameters")
        for i, tool in enumerate(request.tools or [])
    ]
    mode, name = tool_choice(request)
    parallel = request.parallel_tool_calls is True
    return plan(specs, mode, name, parallel, answer_format(request.text), "tool_choice")


def usage(outcome: Outcome) -> p.Usage:
    """OpenAI's `input_tokens` include the cached ones."""
    return p.Usage(
        input_tokens=outcome.prompt_tokens,
        input_tokens_details=p.InputTokensDetails(cached_tokens=outcome.cached_tokens),
        output_tokens=outcome.completion_tokens,
        total_tokens=outcome.prompt_tokens + outcome.completion_tokens,
    )


Event = tuple[str, dict[str, Any]]


def _dump(item: p.OutputMessage | p.FunctionCall | p.OutputText) -> dict[str, Any]:
    return item.model_dump(mode="json")


class _Items:
    """Output items built from answer parts, with the stream events that build them, in order. A call
    the budget cut short is streamed as far as it went but left out of `output`, so a client never
    gets arguments that do not parse (as the other APIs do)."""

    def __init__(self) -> None:
        self.items: list[p.OutputMessage | p.FunctionCall] = []
        self._message: p.OutputMessage | None = None  # the open one
        self._where: dict[str, Any] = {}  # the open message's item_id, output_index, content_index
        self._pieces: list[str] = []  # its text so far
        self._calls: dict[int, tuple[int, p.FunctionCall]] = {}  # open calls: output index, item
        self._cut: set[int] = set()  # output indices of the calls the budget cut short

    @property
    def output(self) -> list[p.OutputMessage | p.FunctionCall]:
        return [item for index, item in enumerate(self.items) if index not in self._cut]

    def part(self, part: Part) -> list[Event]:
        if isinstance(part, Text):
            opening = self._open_message()
            self._pieces.append(part.text)
            return [
                *opening,
                ("response.output_text.delta", {**self._where, "delta": part.text, "logprobs": []}),
            ]
        if isinstance(part, Opened):
            call = p.FunctionCall(
                id=_id("fc_"), call_id=part.id, name=part.name, arguments="", status="in_progress"
            )
            closed = self._close_message("completed")
            self._calls[part.index] = (len(self.items), call)
            return [*closed, self._added(call)]
        if isinstance(part, Fragment):
            index, call = self._calls[part.index]
            call.arguments += part.text
            fields = {"item_id": call.id, "output_index": index, "delta": part.text}
            return [("response.function_call_arguments.delta", fields)]
        return self._close_call(part)

    def finish(self, status: p.Status) -> list[Event]:
        """Close what is still open; an answer with no item at all gets one empty message."""
        events = [] if self.items else self._open_message()
        events += self._close_message(status)
        for index, call in self._calls.values():
            call.status = "incomplete"
            self._cut.add(index)
            events.append(("response.output_item.done", {"output_index": index, "item": _dump(call)}))
        self._calls.clear()
        return events

    def _added(self, item: p.OutputMessage | p.FunctionCall) -> Event:
        self.items.append(item)
        return "response.output_item.added", {"output_index": len(self.items) - 1, "item": _dump(item)}

    def _open_message(self) -> list[Event]:
        if self._message is not None:
            return []
        self._message = p.OutputMessage(id=_id("msg_"), status="in_progress", content=[])
        added = self._added(self._message)
        self._where.update(item_id=self._message.id, output_index=len(self.items) - 1, content_index=0)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [added, ("response.content_part.added", {**self._where, "part": part})]

    def _close_message(self, status: p.Status) -> list[Event]:
        message, where = self._message, self._where
        if message is None:
            return []
        self._message, self._where = None, {}
        text = p.OutputText(text="".join(self._pieces))
        self._pieces = []
        message.content, message.status = [text], status
        return [
            ("response.output_text.done", {**where, "text": text.text, "logprobs": []}),
            ("response.content_part.done", {**where, "part": _dump(text)}),
            ("response.output_item.done", {"output_index": where["output_index"], "item": _dump(message)}),
        ]

    def _close_call(self, part: Closed) -> list[Event]:
        index, call = self._calls.pop(part.index)
        call.arguments, call.status = canonical(part.call.arguments), "completed"
        return [
            (
                "response.function_call_arguments.done",
                {"item_id": call.id, "output_index": index, "arguments": call.arguments},
            ),
            ("response.output_item.done", {"output_index": index, "item": _dump(call)}),
        ]


def _id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}"


class Reply:
    """One response, whole or as typed events, from a started generation; `keep` is called with the
    finished response and its conversation (to store it) before the client sees it."""

    def __init__(
        self,
        request: p.ResponsesRequest,
        tools: Sequence[ToolSpec],
        history: Sequence[ChatMessage],
        keep: Callable[[p.Response, list[ChatMessage]], None],
    ) -> None:
        self.request, self.history, self.keep = request, history, keep
        self.ident, self.created = _id("resp_"), int(time.time())
        self.assembler = Assembler(tools, "call_")

    async def response(self, stream: Events) -> p.Response:
        items = _Items()
        for part in await parts(stream, self.assembler):
            items.part(part)
        outcome = _outcome(stream)
        items.finish(_status(outcome))
        return self._finished(items, outcome)

    async def events(self, stream: Events) -> AsyncIterator[str]:
        """response.created, response.in_progress, each item's events, then response.completed (or
        response.incomplete when the budget ran out); an `error` event if the engine fails midway."""
        numbers = itertools.count()

        def event(kind: str, fields: dict[str, Any]) -> str:
            return sse({"type": kind, "sequence_number": next(numbers), **fields}, event=kind)

        started = self._response("in_progress", [], None).model_dump(mode="json")
        yield event("response.created", {"response": started})
        yield event("response.in_progress", {"response": started})
        items = _Items()
        try:
            async for generated in stream.events():
                for part in self.assembler.feed(generated):
                    for kind, fields in items.part(part):
                        yield event(kind, fields)
            for part in self.assembler.finish():
                for kind, fields in items.part(part):
                    yield event(kind, fields)
        except (EngineError, CallError) as exc:
            yield event(
                "error", {"code": "server_error", "message": f"generation failed: {exc}", "param": None}
            )
            return
        outcome = _outcome(stream)
        for kind, fields in items.finish(_status(outcome)):
            yield event(kind, fields)
        response = self._finished(items, outcome)
        done = "response.completed" if response.status == "completed" else "response.incomplete"
        yield event(done, {"response": response.model_dump(mode="json")})

    def _finished(self, items: _Items, outcome: Outcome) -> p.Response:
        """The final response, kept (if asked) before the client can send a follow-up to it."""
        response = self._response(_status(outcome), items.output, usage(outcome))
        text = "".join(item.content[0].text for item in items.output if isinstance(item, p.OutputMessage))
        self.keep(response, [*self.history, ChatMessage("assistant", text, tuple(self.assembler.calls))])
        return response

    def _response(
        self, status: p.Status, output: list[p.OutputMessage | p.FunctionCall], use: p.Usage | None
    ) -> p.Response:
        request = self.request
        return p.Response(
            id=self.ident,
            created_at=self.created,
            status=status,
            incomplete_details=p.IncompleteDetails() if status == "incomplete" else None,
            instructions=request.instructions,
            max_output_tokens=request.max_output_tokens,
            model=request.model,
            output=cast(Any, output),
            parallel_tool_calls=request.parallel_tool_calls is True,
            previous_response_id=request.previous_response_id,
            store=request.store,
            temperature=_temperature(request),
            text=request.text or p.TextConfig(),
            tool_choice=request.tool_choice or "auto",
            tools=request.tools or [],
            top_p=_top_p(request),
            usage=use,
            metadata=request.metadata or {},
        )


def _status(outcome: Outcome) -> p.Status:
    return "incomplete" if outcome.finish_reason == "length" else "completed"


def _outcome(stream: Events) -> Outcome:
    assert stream.outcome is not None, "a finished stream has an outcome"
    return stream.outcome


def _temperature(request: p.ResponsesRequest) -> float:
    return 1.0 if request.temperature is None else request.temperature


def _top_p(request: p.ResponsesRequest) -> float:
    return 1.0 if request.top_p is None else request.top_p


class ResponsesServing:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.store = runtime.responses

    async def create(self, request: Request, body: p.ResponsesRequest) -> p.Response | EventStream:
        self.runtime.pool.route(body.model)
        prior = self.previous(body.previous_response_id)
        history = [*prior, *to_messages(body.input, prior)]
        tools, constraint_plan = constraint(body)
        system = [ChatMessage("system", body.instructions)] if body.instructions else []
        params = SamplingParams(
            max_tokens=body.max_output_tokens or 0, temperature=_temperature(body), top_p=_top_p(body)
        )
        prompt = ChatPrompt([*system, *history], tools)
        start = self.runtime.start(body.model, prompt, params, [], constraint_plan, body.keep_alive)
        stream = await unless_disconnected(request, start)
        reply = Reply(body, tools, history, self._keeper(body.store))
        if body.stream:
            return EventStream(reply.events(stream), on_close=stream.aclose)
        try:
            return await unless_disconnected(request, reply.response(stream))
        except EngineError as exc:  # the answer had started: a server-side failure, in the envelope
            raise ApiError("server", f"generation failed: {exc}") from None
        finally:
            await stream.aclose()

    def previous(self, response_id: str | None) -> tuple[ChatMessage, ...]:
        """The conversation a follow-up continues; OpenAI does not carry `instructions` over."""
        if response_id is None:
            return ()
        entry = self.store.get(response_id)
        if entry is None:
            raise ApiError("no_route", f"previous_response_id: {_missing(response_id)}")
        return entry.history

    def retrieve(self, response_id: str) -> p.Response:
        entry = self.store.get(response_id)
        if entry is None:
            raise ApiError("no_route", _missing(response_id))
        return entry.response

    def delete(self, response_id: str) -> p.Deleted:
        if not self.store.delete(response_id):
            raise ApiError("no_route", _missing(response_id))
        return p.Deleted(id=response_id)

    def _keeper(self, store: bool) -> Callable[[p.Response, list[ChatMessage]], None]:
        if not store:
            return lambda response, history: None
        return lambda response, history: self.store.put(stored(response, history))


def _missing(response_id: str) -> str:
    return (
        f"no response with id '{response_id}' is stored here (only recent responses sent with store: true "
        "are kept, in memory, until a restart); send the whole conversation as input instead"
    )
