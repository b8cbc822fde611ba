/* /ui/chat: a conversation with any served model, streamed through the OpenAI chat API's handler. */
"use strict";

(() => {
  const transcript = document.getElementById("transcript");
  const prompt = document.getElementById("prompt");
  const send = document.getElementById("send");
  const stop = document.getElementById("stop");
  const meta = document.getElementById("chat-meta");
  let history = [];
  let running = null;

  function bubble(role, text) {
    const div = document.createElement("div");
    div.className = "message " + role;
    div.textContent = text;
    transcript.append(div);
    div.scrollIntoView({ block: "end" });
    return div;
  }

  function number(id) {
    const value = document.getElementById(id).value;
    return value === "" ? undefined : Number(value);
  }

  function request() {
    const system = document.getElementById("system").value.trim();
    return {
      model: document.getElementById("model").value,
      messages: system ? [{ role: "system", content: system }, ...history] : history,
      temperature: number("temperature"),
      top_p: number("top_p"),
      max_tokens: number("max_tokens"),
      stream: true,
      stream_options: { include_usage: true },
    };
  }

  /* The streamed SSE events' payloads, as they arrive. */
  async function* events(response) {
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") return;
          yield JSON.parse(data);
        }
      }
    }
  }

  document.getElementById("ask").addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = prompt.value.trim();
    if (!text || running) return;
    history.push({ role: "user", content: text });
    bubble("user", text);
    prompt.value = "";
    const answer = bubble("assistant", "");
    answer.classList.add("streaming");
    running = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    const started = performance.now();
    let usage = null;
    let finish = "";
    try {
      const response = await UI.post("/ui/api/chat", request(), running.signal);
      for await (const chunk of events(response)) {
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) answer.textContent += choice.delta.content;
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
      UI.showError("");
    } catch (e) {
      if (e.name !== "AbortError") UI.showError(e.message);
      finish = e.name === "AbortError" ? "stopped" : "error";
    } finally {
      answer.classList.remove("streaming");
      answer.dataset.finish = finish;
      history.push({ role: "assistant", content: answer.textContent });
      const took = ((performance.now() - started) / 1000).toFixed(1);
      meta.textContent = `${finish || "done"} · ${took} s` + (usage ? ` · ${usage.prompt_tokens} in, ${usage.completion_tokens} out` : "");
      running = null;
      send.disabled = false;
      stop.disabled = true;
    }
  });

  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      document.getElementById("ask").requestSubmit();
    }
  });
  stop.addEventListener("click", () => running && running.abort());
  document.getElementById("clear").addEventListener("click", () => {
    history = [];
    transcript.replaceChildren();
    meta.textContent = "";
  });
})();
