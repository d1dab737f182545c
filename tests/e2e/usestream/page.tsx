// The useStream page of test_usestream.py: a chat front end written as LangGraph's docs show,
// against whatever server ?api= names (headwater serve, or langgraph dev as the reference).
import React, { useState } from "react";
import { createRoot } from "react-dom/client";
import { useStream } from "@langchain/langgraph-sdk/react";

const params = new URLSearchParams(window.location.search);
const apiUrl = params.get("api") ?? "http://127.0.0.1:2024";
const assistantId = params.get("assistant") ?? "chat";
const apiKey = params.get("key") ?? undefined; // sent as x-api-key

type Shown = { type: string; id?: string; content: unknown; tool_calls?: unknown[]; name?: string };

function textOf(content: unknown): string {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content.map((part) => (typeof part === "string" ? part : part?.text ?? "")).join("");
  }
  return "";
}

function typeOf(message: any): string {
  return message.type ?? message._getType?.() ?? message.getType?.() ?? "unknown";
}

function Message({ message }: { message: Shown }) {
  const type = typeOf(message);
  const calls = (message.tool_calls ?? []) as { name: string; args: unknown; id?: string }[];
  return (
    <li className={`message ${type}`} data-id={message.id ?? ""}>
      <span className="text">{textOf(message.content)}</span>
      {calls.map((call, i) => (
        <span className="tool-call" key={call.id ?? i} data-name={call.name}>
          {`${call.name}(${JSON.stringify(call.args)})`}
        </span>
      ))}
    </li>
  );
}

function App() {
  const [threadId, setThreadId] = useState<string | null>(null);
  const [runs, setRuns] = useState<string[]>([]);
  const [finished, setFinished] = useState(0);
  const [prompt, setPrompt] = useState("");
  const thread = useStream<{ messages: Shown[] }>({
    apiUrl,
    apiKey,
    assistantId,
    messagesKey: "messages",
    threadId,
    onThreadId: setThreadId,
    onCreated: (run) => setRuns((seen) => [...seen, run.run_id]),
    onFinish: () => setFinished((n) => n + 1),
  });
  const interrupt = thread.interrupt as { value?: unknown } | undefined;
  return (
    <main>
      <form
        onSubmit={(event) => {
          event.preventDefault();
          thread.submit({ messages: [{ type: "human", content: prompt }] });
          setPrompt("");
        }}
      >
        <input id="prompt" value={prompt} onChange={(e) => setPrompt(e.target.value)} />
        <button id="send" type="submit" disabled={thread.isLoading}>
          Send
        </button>
      </form>
      <p id="status">{thread.isLoading ? "streaming" : "idle"}</p>
      <p id="thread">{threadId ?? ""}</p>
      <p id="runs">{runs.join(" ")}</p>
      <p id="finished">{String(finished)}</p>
      <ol id="messages">
        {thread.messages.map((message, i) => (
          <Message key={message.id ?? i} message={message} />
        ))}
      </ol>
      {interrupt !== undefined && !thread.isLoading ? (
        <section id="interrupt">
          <pre id="interrupt-value">{JSON.stringify(interrupt.value ?? interrupt)}</pre>
          <button
            id="resume"
            onClick={() => thread.submit(undefined, { command: { resume: "yes" } })}
          >
            Publish
          </button>
        </section>
      ) : null}
      {thread.error != null ? <p id="error">{String(thread.error)}</p> : null}
    </main>
  );
}

createRoot(document.getElementById("root")!).render(<App />);
