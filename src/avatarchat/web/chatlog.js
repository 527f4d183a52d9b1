// The chat log: one user line and one avatar line per turn, updated in place as partial
// transcripts and reply deltas stream in.

import { t } from "./i18n.js";
import { ui } from "./ui.js";

const turns = new Map(); // turn -> {user, avatar}
const typedLines = []; // user lines typed here and not yet matched to a server turn

function turnEntry(turn) {
  if (!turns.has(turn)) turns.set(turn, { user: null, avatar: null });
  return turns.get(turn);
}

export function addLine(kind, who, text) {
  const li = document.createElement("li");
  li.className = `msg ${kind}`;
  if (who) {
    const label = document.createElement("span");
    label.className = "who";
    label.textContent = who;
    li.append(label);
  }
  const body = document.createElement("span");
  body.className = "body";
  body.textContent = text;
  li.append(body);
  const atBottom = ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 40;
  ui.log.append(li);
  if (atBottom) ui.log.scrollTop = ui.log.scrollHeight;
  return li;
}

function setBody(li, text) {
  li.querySelector(".body").textContent = text;
  ui.log.scrollTop = ui.log.scrollHeight;
}

// Shown at once, before the server echoes it back as the turn's transcript.
export function addTypedLine(text) {
  const li = addLine("user", t("youTyped"), text);
  li.dataset.text = text;
  typedLines.push(li);
}

export function onTranscript({ turn, text, final }) {
  const entry = turnEntry(turn);
  if (!entry.user) {
    // A typed message comes back as this turn's transcript: reuse its line.
    const i = typedLines.findIndex((li) => sameText(li.dataset.text, text));
    entry.user = i >= 0 ? typedLines.splice(i, 1)[0] : addLine("user", t("you"), text);
  }
  entry.user.dataset.turn = turn;
  entry.user.classList.toggle("partial", !final);
  setBody(entry.user, text);
}

// A reply cut off (barge-in, interrupt, a typed message) comes once more with
// `interrupted: true` and the words the user heard: they replace what was streamed.
export function onReply({ turn, text, final, interrupted }) {
  const entry = turnEntry(turn);
  if (!entry.avatar) {
    entry.avatar = addLine("avatar streaming", t("avatarSpeaker"), "");
    entry.avatar.dataset.turn = turn;
    // Typed lines the server never echoed belong to this turn.
    if (!entry.user && typedLines.length) entry.user = typedLines.shift();
  }
  const li = entry.avatar;
  if (final) {
    setBody(li, text);
    li.classList.remove("streaming");
    li.classList.toggle("interrupted", Boolean(interrupted));
    li.dataset.final = "1";
  } else {
    setBody(li, li.querySelector(".body").textContent + text);
  }
}

export function finishStreaming(interrupted) {
  for (const li of ui.log.querySelectorAll(".msg.streaming")) {
    li.classList.remove("streaming");
    if (interrupted) li.classList.add("interrupted");
  }
}

function sameText(a, b) {
  const norm = (s) => (s || "").toLowerCase().replace(/[^\p{L}\p{N}]+/gu, " ").trim();
  return norm(a) === norm(b);
}
