// The "Last turn" panel: the latency figures of the server's `metrics` message.

import { ui } from "./ui.js";

// Known timings first, in this order; other keys follow with a label made from the key.
const METRIC_LABELS = [
  ["first_audio_after_speech_end_ms", "You stopped → first audio"],
  ["first_audio_sent_ms", "First audio sent"],
  ["first_frame_sent_ms", "First frame sent"],
  ["vad_hangover_ms", "End-of-speech wait"],
  ["decision_to_first_audio_sent_ms", "Turn decided → first audio sent"],
  ["asr_early_ms", "Speech recognition (at the pause)"],
  ["asr_ms", "Speech recognition left at the end"],
  ["llm_first_token_ms", "LLM first token"],
  ["tts_first_audio_ms", "TTS first audio"],
  ["avatar_first_frame_ms", "Avatar first frame"],
  ["first_audio_after_asr_ms", "ASR start → first audio"],
  ["speculated", "Reply prepared during the pause (1 = yes)"],
  ["speculations_dropped", "Replies prepared and dropped"],
];
const KEY_METRICS = ["first_audio_after_speech_end_ms", "first_audio_sent_ms"];

function metricLabel(key) {
  const known = METRIC_LABELS.find(([k]) => k === key);
  if (known) return known[1];
  const words = key.replace(/_ms$/, "").replace(/_/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function formatValue(key, value) {
  if (typeof value !== "number") return String(value);
  if (!key.endsWith("_ms")) return String(Math.round(value * 100) / 100);
  return value >= 10 ? `${Math.round(value)} ms` : `${value.toFixed(1)} ms`;
}

function sortedKeys(msg) {
  const keys = Object.keys(msg).filter((k) => k !== "type" && k !== "turn");
  const order = METRIC_LABELS.map(([k]) => k);
  return keys.sort((a, b) => {
    const ia = order.indexOf(a), ib = order.indexOf(b);
    return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
  });
}

export function showMetrics(msg) {
  ui.metrics.replaceChildren();
  ui.metricsEmpty.hidden = true;
  for (const key of sortedKeys(msg)) {
    const item = document.createElement("div");
    item.className = KEY_METRICS.includes(key) ? "metric key" : "metric";
    item.dataset.key = key;
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = metricLabel(key);
    dd.textContent = formatValue(key, msg[key]);
    item.append(dt, dd);
    ui.metrics.append(item);
  }
  ui.metricsTurn.textContent = msg.turn != null ? `(turn ${msg.turn})` : "";
}
