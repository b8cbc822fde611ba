"""Ollama requests to engine calls, engine output to Ollama's objects and NDJSON streams.

Names: a model is asked for by its catalog name (or an alias); `NAME:latest` is the same model, since
Ollama clients add the tag. History tool calls carry no ids in Ollama's API: each gets one here, and
a `tool` message answers the oldest unanswered call of its `tool_name`. An empty prompt (or no
messages) only loads the model, or with `keep_alive: 0` unloads it, as Ollama does.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from inference_server.calls import (
    Assembler,
    CallError,
    Closed,
    Events,
    Text,
    complete,
    json_answer,
    new_id,
    parts,
    plan,
    tool_spec,
)
from inference_server.engines import factory
from inference_server.engines.base import ChatMessage, EngineError, SamplingParams, ToolCall, ToolSpec
from inference_server.errors import ApiError
from inference_server.generation import ChatPrompt, Outcome, Prompt
from inference_server.ollama import details
from inference_server.ollama import protocol as p
from inference_server.pool import Model
from inference_server.runtime import Runtime
from inference_server.settings import ModelSpec
from inference_server.streaming import HOLE, EventStream, filler, unless_disconnected
from inference_server.toolcalls import ConstraintPlan
from inference_server.vectors import shortened

VERSION = "0.12.0"  # the Ollama release whose API this matches; clients gate features on it
NDJSON = "application/x-ndjson"
FOREVER = "9999-12-31T23:59:59Z"  # expires_at of a model that never expires (pinned, kept forever)
# Ollama's defaults, which its clients expect when they send no options
TEMPERATURE, TOP_P = 0.8, 0.9


def timestamp(at: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if at is None else at, UTC).isoformat().replace("+00:00", "Z")


def line(obj: BaseModel | dict[str, Any]) -> str:
    data = obj.model_dump(mode="json", exclude_none=True) if isinstance(obj, BaseModel) else obj
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n"


# -- requests to engine input ---------------------------------------------------------------------


def sampling(options: p.Options | None) -> tuple[SamplingParams, list[str]]:
    o = options or p.Options()
    limit = o.num_predict or 0
    params = SamplingParams(
        max_tokens=max(limit, 0),
        temperature=TEMPERATURE if o.temperature is None else o.temperature,
        top_p=TOP_P if o.top_p is None else o.top_p,
        seed=o.seed,
    )
    return params, o.stop or []


def answer_format(fmt: p.Format | None) -> ConstraintPlan | None:
    """`"json"`: any JSON object; a dict: that JSON Schema."""
    if not fmt:
        return None
    return json_answer(None if fmt == "json" else fmt, "format")


def with_images(message: p.Message) -> str:
    """Images become a marker the model can read (as the OpenAI route does)."""
    return "\n".join([message.content, *("[image]" for _ in message.images or [])]).strip("\n")


def to_messages(messages: Sequence[p.Message]) -> list[ChatMessage]:
    converted = []
    unanswered: list[ToolCall] = []
    for message in messages:
        calls = tuple(
            ToolCall(new_id("call_"), c.function.name, c.function.arguments) for c in message.tool_calls or []
        )
        unanswered += calls
        call_id, name = "", message.tool_name or ""
        if message.role == "tool":
            answered = next((c for c in unanswered if not name or c.name == name), None)
            if answered is not None:
                unanswered.remove(answered)
                call_id, name = answered.id, answered.name
        converted.append(ChatMessage(message.role, with_images(message), calls, call_id, name))
    return converted


def constraint(body: p.ChatRequest) -> tuple[tuple[ToolSpec, ...], ConstraintPlan | None]:
    """Ollama has no tool_choice: with tools the model may call one or answer."""
    specs = [
        tool_spec(t.function.name, t.function.description, t.function.parameters, f"tools[{i}].function")
        for i, t in enumerate(body.tools or [])
    ]
    return plan(specs, "auto" if specs else "none", "", False, answer_format(body.format), "tools")


def generate_prompt(body: p.GenerateRequest) -> Prompt:
    """Through the model's chat template, as Ollama does, unless `raw`."""
    if body.raw:
        return body.prompt
    system = [ChatMessage("system", body.system)] if body.system else []
    return ChatPrompt([*system, ChatMessage("user", body.prompt + "\n[image]" * len(body.images or []))])


# -- engine output to Ollama's objects -------------------------------------------------------------


class Timer:
    """The durations Ollama reports, in nanoseconds: loading, the prompt (up to the first token), the
    answer."""

    def __init__(self, model: Model) -> None:
        self.began = time.monotonic()
        self.model = model
        self.was_loaded = model.state == "loaded"
        self.first = 0.0

    def started(self) -> None:
        self.first = time.monotonic()

    def done(self, outcome: Outcome, reason: str) -> p.Done:
        end = time.monotonic()
        load = 0.0 if self.was_loaded else min(self.model.load_s, self.first - self.began)
        return p.Done(
            done_reason=reason,
            total_duration=_ns(end - self.began),
            load_duration=_ns(load),
            prompt_eval_count=outcome.prompt_tokens,
            prompt_eval_duration=_ns(self.first - self.began - load),
            eval_count=outcome.completion_tokens,
            eval_duration=_ns(end - self.first),
        )


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


def done_reason(outcome: Outcome) -> str:
    return "length" if outcome.finish_reason == "length" else "stop"


class Reply:
    """One answer as /api/chat or /api/generate shapes it, whole or as NDJSON lines."""

    def __init__(self, kind: Literal["chat", "generate"], model: str, tools: Sequence[ToolSpec]) -> None:
        self.kind, self.model, self.created = kind, model, timestamp()
        self.assembler = Assembler(tools, "call_")

    def chunk(self, text: str, calls: Sequence[ToolCall] = ()) -> BaseModel:
        if self.kind == "generate":
            return p.GenerateChunk(model=self.model, created_at=self.created, response=text)
        return p.ChatChunk(model=self.model, created_at=self.created, message=_message(text, calls))

    def last(self, done: p.Done, text: str = "", calls: Sequence[ToolCall] = ()) -> BaseModel:
        common = {**done.model_dump(), "model": self.model, "created_at": timestamp()}
        if self.kind == "generate":
            return p.GenerateDone(**common, response=text)
        return p.ChatDone(**common, message=_message(text, calls))

    async def whole(self, stream: Events, timer: Timer) -> BaseModel:
        answer = complete(await parts(stream, self.assembler))
        text = "".join(part.text for part in answer if isinstance(part, Text))
        calls = [part.call for part in answer if isinstance(part, Closed)]
        outcome = _outcome(stream)
        return self.last(timer.done(outcome, done_reason(outcome)), text, calls)

    async def lines(self, stream: Events, timer: Timer) -> AsyncIterator[str]:
        text = filler(line(self.chunk(HOLE)))
        try:
            async for event in stream.events():
                for part in self.assembler.feed(event):
                    if isinstance(part, Text):
                        yield text(part.text)
                    elif isinstance(part, Closed):
                        yield line(self.chunk("", [part.call]))
        except (EngineError, CallError) as exc:
            yield line({"error": f"generation failed: {exc}"})
            return
        for part in self.assembler.finish():
            if isinstance(part, Text):
                yield text(part.text)
        outcome = _outcome(stream)
        yield line(self.last(timer.done(outcome, done_reason(outcome))))


def _message(text: str, calls: Sequence[ToolCall]) -> p.AssistantMessage:
    out = [p.ToolCallOut(function=p.FunctionCall(name=c.name, arguments=c.arguments)) for c in calls]
    return p.AssistantMessage(content=text, tool_calls=out or None)


def _outcome(stream: Events) -> Outcome:
    assert stream.outcome is not None, "a finished stream has an outcome"
    return stream.outcome


# -- the service -----------------------------------------------------------------------------------


class OllamaServing:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def route(self, requested: str) -> tuple[str, Model]:
        """The name to start work under and its model; Ollama's words for an unknown one."""
        pool = self.runtime.pool
        for name in dict.fromkeys([requested, requested.removesuffix(":latest")]):
            if pool.settings.route(name) is not None:
                return name, pool.route(name)
        raise ApiError("not_found", f"model '{requested}' not found")

    async def chat(self, request: Request, body: p.ChatRequest) -> Response | BaseModel:
        name, model = self.route(body.model)
        if not body.messages:
            return await self._load_or_unload("chat", name, body)
        tools, constraint_plan = constraint(body)
        prompt = ChatPrompt(to_messages(body.messages), tools)
        reply = Reply("chat", body.model, tools)
        return await self._answer(request, reply, name, model, prompt, body, constraint_plan)

    async def generate(self, request: Request, body: p.GenerateRequest) -> Response | BaseModel:
        name, model = self.route(body.model)
        if not body.prompt:
            return await self._load_or_unload("generate", name, body)
        reply = Reply("generate", body.model, ())
        prompt = generate_prompt(body)
        return await self._answer(request, reply, name, model, prompt, body, answer_format(body.format))

    async def _answer(
        self,
        request: Request,
        reply: Reply,
        name: str,
        model: Model,
        prompt: Prompt,
        body: p._Generating,
        constraint_plan: ConstraintPlan | None,
    ) -> Response | BaseModel:
        params, stops = sampling(body.options)
        timer = Timer(model)
        start = self.runtime.start(name, prompt, params, stops, constraint_plan, body.keep_alive)
        stream = await unless_disconnected(request, start)
        timer.started()
        if body.stream:
            return EventStream(reply.lines(stream, timer), on_close=stream.aclose, media_type=NDJSON)
        try:
            return await unless_disconnected(request, reply.whole(stream, timer))
        finally:
            await stream.aclose()

    async def _load_or_unload(
        self, kind: Literal["chat", "generate"], name: str, body: p._Generating | p.EmbedRequest
    ) -> BaseModel:
        """Open WebUI's unload button sends `keep_alive: 0` and nothing to answer."""
        reply = Reply(kind, body.model, ())
        if body.keep_alive == 0:
            await self.runtime.pool.unload(name)
            return reply.last(p.Done(done_reason="unload"))
        held = await self.runtime.pool.hold(name, body.keep_alive)
        held.release()
        return reply.last(p.Done(done_reason="load"))

    # -- embeddings ----------------------------------------------------------------------------------

    async def embed(self, body: p.EmbedRequest) -> p.Embed:
        """One unit vector per input, in one batch; no inputs only loads the model (as Ollama)."""
        name, model = self.route(body.model)
        inputs = [body.input] if isinstance(body.input, str) else body.input
        timer = Timer(model)
        if not inputs:
            await self._load_or_unload("generate", name, body)
            return p.Embed(
                model=body.model, embeddings=[], total_duration=0, load_duration=0, prompt_eval_count=0
            )
        embedded = await self.runtime.embed(name, inputs, body.keep_alive)
        vectors = embedded.vectors
        if body.dimensions is not None:
            size = len(vectors[0])
            if body.dimensions > size:
                raise ApiError("invalid_request", f"dimensions: {body.model}'s embeddings have {size}")
            vectors = [shortened(vector, body.dimensions) for vector in vectors]
        timer.started()
        done = timer.done(Outcome("stop", None, embedded.prompt_tokens, 0, 0), "stop")
        return p.Embed(
            model=body.model,
            embeddings=vectors,
            total_duration=done.total_duration,
            load_duration=done.load_duration,
            prompt_eval_count=embedded.prompt_tokens,
        )

    async def embeddings(self, body: p.EmbeddingsRequest) -> p.Embeddings:
        name, _ = self.route(body.model)
        embedded = await self.runtime.embed(name, [body.prompt], body.keep_alive)
        return p.Embeddings(embedding=embedded.vectors[0])

    # -- what is installed and loaded --------------------------------------------------------------

    async def tags(self) -> p.Tags:
        """Every name /v1/models lists: an alias as a copy of its model (what `ollama cp` lists)."""
        pool = self.runtime.pool
        listed = []
        for name in pool.listed_names():
            entry = await asyncio.to_thread(_listed, pool.route(name).spec)
            listed.append(entry.model_copy(update={"name": name, "model": name}))
        return p.Tags(models=listed)

    async def ps(self) -> p.Running:
        now_wall, now = time.time(), time.monotonic()
        running = []
        for model in self.runtime.pool.models.values():
            if model.state != "loaded":
                continue
            listed = await asyncio.to_thread(_listed, model.spec)
            running.append(
                p.RunningModel(
                    name=listed.name,
                    model=listed.model,
                    size=model.need.bytes,
                    digest=listed.digest,
                    details=listed.details,
                    expires_at=_expires_at(model, now_wall, now),
                    context_length=_context(model),
                )
            )
        return p.Running(models=running)

    async def show(self, body: p.ModelRequest) -> p.Show:
        _, model = self.route(body.requested)
        spec = model.spec
        facts = await asyncio.to_thread(details.facts, spec.path)
        listed = await asyncio.to_thread(_listed, spec)
        template = facts.chat_template or (model.engine.template_source if model.engine else None) or ""
        parameters = f"num_ctx {spec.context_size}\ntemperature {TEMPERATURE}\ntop_p {TOP_P}"
        info = {**facts.metadata, "general.parameter_count": facts.parameters}
        if facts.architecture:
            info[f"{facts.architecture}.context_length"] = facts.context_length or spec.context_size
        return p.Show(
            modelfile=f"FROM {spec.path}\nPARAMETER num_ctx {spec.context_size}\n",
            parameters=parameters,
            template=template,
            details=listed.details,
            model_info=info,
            capabilities=["completion", *(["tools"] if "tools" in template else [])],
            modified_at=listed.modified_at,
        )

    # -- pull and delete, through the project's own tasks ------------------------------------------

    async def pull(self, body: p.PullRequest) -> Response | BaseModel:
        """`models.download NAME --progress-json` relayed; the model is served once it succeeds."""
        name = body.requested.removesuffix(":latest")
        if not name:
            raise ApiError("invalid_request", "model: give the catalog name to pull")
        command = self.runtime.settings.manage_command
        task = await Task.start(command, "models.download", name, "--progress-json")
        first = await task.next()
        if first is None or "error" in first:
            await task.stop()
            raise _task_error(first, await task.failure())
        if body.stream:
            return EventStream(self._relay(task, first), on_close=task.stop, media_type=NDJSON)
        try:
            last: dict[str, Any] = {}
            async for text in self._relay(task, first):
                last = json.loads(text)
        finally:
            await task.stop()
        if "error" in last:
            raise ApiError("server", str(last["error"]))
        return JSONResponse(last)

    async def _relay(self, task: Task, first: dict[str, Any]) -> AsyncIterator[str]:
        current: dict[str, Any] | None = first
        while current is not None:
            if "model" in current:
                yield line(self._serve_pulled(current["model"]))
                return
            if "error" in current:
                yield line({"error": str(current["error"])})
                return
            yield line(current)
            current = await task.next()
        yield line({"error": await task.failure()})

    def _serve_pulled(self, spec_json: Any) -> dict[str, Any]:
        try:
            spec = ModelSpec.model_validate(spec_json)
            factory.choose(self.runtime.settings.engine, spec.format)
        except (ValidationError, EngineError) as exc:
            return {"error": f"downloaded, but this server cannot serve it ({exc}); restart the server"}
        self.runtime.pool.add(spec)
        return {"status": "success"}

    async def delete(self, body: p.ModelRequest) -> Response:
        """`models.delete NAME --yes`, for a model that is not the default and answers nothing now;
        a loaded idle one is unloaded first."""
        pool = self.runtime.pool
        name = body.requested.removesuffix(":latest")
        model = pool.models.get(name)
        if model is None:
            raise ApiError("not_found", f"model '{body.requested}' not found")
        if name == pool.settings.default_model:
            raise ApiError("invalid_request", f"model '{name}' is this server's default: serve another first")
        if model.held or model.state == "loading":
            raise ApiError("invalid_request", f"model '{name}' is answering requests: delete it after")
        await pool.unload(name)
        task = await Task.start(self.runtime.settings.manage_command, "models.delete", name, "--yes")
        said = await task.output()
        if task.returncode:
            raise ApiError("server", await task.failure())
        if model.spec.path.exists():
            raise ApiError("invalid_request", f"model '{name}': {said.strip() or 'its files stay'}")
        pool.remove(name)
        return Response(status_code=200)


class Task:
    """One of the project's tasks as a child process: JSON objects from its stdout, its last stderr line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, command: list[str], *args: str) -> Task:
        process = await asyncio.create_subprocess_exec(
            *command,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def next(self) -> dict[str, Any] | None:
        """The next JSON object it printed (other lines are skipped); None once its output ends."""
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            if isinstance(obj, dict):
                return obj
        return None

    async def output(self) -> str:
        assert self.process.stdout is not None
        out = await self.process.stdout.read()
        await self.process.wait()
        return out.decode(errors="replace")

    async def failure(self) -> str:
        """Why it failed: its one-line error (without invoke's `error: `)."""
        assert self.process.stderr is not None
        err = (await self.process.stderr.read()).decode(errors="replace").strip().splitlines()
        code = await self.process.wait()
        return err[-1].removeprefix("error: ") if err else f"the task exited with code {code}"

    async def stop(self) -> None:
        """Ends it if it still runs (a client that left a pull: the download resumes next time)."""
        if self.process.returncode is None:
            self.process.terminate()
        await self.process.wait()


def _task_error(obj: dict[str, Any] | None, failure: str) -> ApiError:
    if obj is not None and obj.get("code") == 404:
        return ApiError("not_found", str(obj["error"]))
    return ApiError("server", str(obj["error"]) if obj else failure)


def _listed(spec: ModelSpec) -> p.ListedModel:
    """A model as /api/tags lists it (reads the file's header: call off the event loop)."""
    facts = details.facts(spec.path)
    try:
        stat = spec.path.stat()
        size = stat.st_size if spec.path.is_file() else sum(f.stat().st_size for f in spec.path.iterdir())
        modified = timestamp(stat.st_mtime)
    except OSError:
        size, modified = 0, timestamp(0)
    family = facts.architecture
    return p.ListedModel(
        name=spec.name,
        model=spec.name,
        modified_at=modified,
        size=size,
        digest=details.digest(spec.path),
        details=p.Details(
            format=spec.format,
            family=family,
            families=[family] if family else None,
            parameter_size=facts.parameter_size,
            quantization_level=facts.quantization,
        ),
    )


def _context(model: Model) -> int:
    return model.engine.info.context_size if model.engine is not None else model.spec.context_size


def _expires_at(model: Model, now_wall: float, now: float) -> str:
    """When it unloads if left idle: a busy model counts its keep-alive from now."""
    if model.pinned or model.keep_alive_s < 0:
        return FOREVER
    left = model.expires_in(now)
    return timestamp(now_wall + (model.keep_alive_s if left is None else left))
