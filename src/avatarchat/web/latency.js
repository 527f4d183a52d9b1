// The "Last turn" panel: the latency figures of the server's `metrics` message.

import { has, t } from "./i18n.js";
import { ui } from "./ui.js";

// Known timings first, in this order (their labels: i18n.js's "metric.KEY"); other keys follow
// with a label made from the key.
const METRIC_ORDER = [
  "first_audio_after_speech_end_ms",
  "first_audio_sent_ms",
  "first_frame_sent_ms",
  "vad_hangover_ms",
  "decision_to_first_audio_sent_ms",
  "pause_to_asr_ms",
  "asr_early_ms",
  "asr_to_llm_ms",
  "asr_ms",
  "llm_first_token_ms",
  "tts_first_audio_ms",
  "avatar_first_frame_ms",
  "first_audio_after_asr_ms",
  "speculated",
  "speculations_dropped",
];
const KEY_METRICS = ["first_audio_after_speech_end_ms", "first_audio_sent_ms"];

function metricLabel(key) {
  if (has(`metric.${key}`)) return t(`metric.${key}`);
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
  return keys.sort((a, b) => {
    const ia = METRIC_ORDER.indexOf(a), ib = METRIC_ORDER.indexOf(b);
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
  ui.metricsTurn.textContent = msg.turn != null ? t("turnNumber", { turn: msg.turn }) : "";
}
