// The page's words in English and Simplified Chinese, and which language it shows.
//
// Which language: `?lang=en|zh` in the page's link; else the server's (GET /api/config's
// `language`, the config's session.language); else the browser's (navigator.languages, the
// first that is English or Chinese: zh, zh-CN, zh-TW… -> zh); else English. An unknown
// `?lang=` or server language is passed over, never shown as an error.
//
// `t(key, vars)` gives a string of the current language ("{name}" filled from `vars`; a key
// the language lacks falls back to English, an unknown key to itself). Elements whose text
// comes from a key say so in `data-i18n` (and `data-i18n-vars`, JSON) or, for attributes,
// `data-i18n-title`, `data-i18n-aria-label`, `data-i18n-placeholder`: `setLanguage` redraws
// them all, so whatever was shown before the server's answer changes with it.

const EN = {
  // index.html
  connection: "Connection",
  conversation: "Conversation",
  dismiss: "Dismiss",
  avatar: "Avatar",
  avatarVideo: "Avatar video",
  pressStartBefore: "Press ",
  pressStartAfter: " to talk",
  syntheticLabel: "AI-animated likeness — not a real recording",
  start: "Start",
  stop: "Stop",
  muteMic: "Mute mic",
  unmuteMic: "Unmute mic",
  interrupt: "Interrupt",
  message: "Message",
  typeMessage: "Type a message",
  send: "Send",
  lastTurnLatency: "Latency of the last turn",
  lastTurn: "Last turn",
  turnNumber: "(turn {turn})",
  metricsEmpty: "Timings appear after the first reply.",
  // The badges: the connection's and the conversation's states.
  "state.idle": "idle",
  "state.connecting": "connecting",
  "state.connected": "connected",
  "state.failed": "failed",
  "state.listening": "listening",
  "state.thinking": "thinking",
  "state.speaking": "speaking",
  // The chat log: who said it, and how a cut reply ends (style.css shows these two).
  you: "You",
  youTyped: "You (typed)",
  avatarSpeaker: "Avatar",
  interrupted: " — interrupted",
  stoppedBeforeAWord: "stopped before a word was said",
  error: "error",
  notConnected: "Not connected.",
  sessionEnded: "Session ended.",
  switchingToWebSocket: "WebRTC {why}: switching to WebSocket.",
  // Banners and errors.
  micDenied: "Microphone access was denied — allow it in the browser's site settings, or type below.",
  noMic: "No microphone was found — you can type below.",
  micError: "Could not open the microphone ({name}: {message}) — you can type below.",
  micSendError: "Could not send the microphone ({error}) — you can type below.",
  insecure:
    "The microphone needs a secure page: open this page over https:// (start the server with " +
    "--self-signed, or give it a certificate and key), or as http://localhost on the server's own " +
    "machine. You can still type below.",
  loading: "The server is still loading its models — connecting as soon as it is ready…",
  loadingGaveUp: "The server is still loading its models — try again in a few seconds.",
  full: "The server is full — try again later.",
  failed:
    "Connection failed — the browser could not reach the server's media port. Across networks the " +
    "server may need a STUN or TURN server (server.ice_servers in its config).",
  unreachable: "Cannot reach the server — is `avatarchat serve` running?",
  couldNotConnect: "Could not connect: {error}",
  healthCheck: "health check: HTTP {status}",
  refused: "The server refused the connection: {message}",
  needsToken:
    "This server needs an access link with a token (…/?token=…): ask whoever runs it for one " +
    "(they make it with `avatarchat token`).",
  badToken:
    "This server needs an access link with a token, and this link's token has expired or is not " +
    "for this server: ask whoever runs it for a new link.",
  closedByServer: "The server ended the session (it was idle or the server stopped). Press Start to talk again.",
  serverEnded: "The server ended the session: {reason}",
  clickToHear: "Click anywhere on the page to hear the avatar.",
  // The status line under the controls: which transport carries the session, and why.
  connectingWebRTC: "Connecting over WebRTC…",
  connectedWebRTC: "Connected over WebRTC",
  fallingBack: "WebRTC could not connect — switching to WebSocket…",
  connectingWebSocket: "Connecting over WebSocket…",
  connectedNoUdp: "Connected over WebSocket (UDP seems blocked)",
  connectedFallback: "Connected over WebSocket (WebRTC could not connect)",
  connectedWebSocket: "Connected over WebSocket (the page's link asks for it)",
  // Why WebRTC was given up (in `switchingToWebSocket`).
  noUdpAnswer: "had no answer over UDP in {s} s (UDP seems blocked)",
  iceFailed: "could not find a path to the server (ICE failed)",
  notConnectedIn: "did not connect within {s} s",
  fallbackFailed:
    "Connection failed — WebRTC could not reach the server's media port (UDP seems blocked) and " +
    "the WebSocket fallback could not connect either.",
  webSocketFailed: "Could not connect over WebSocket — is `avatarchat serve` running, and this link still valid?",
  webSocketRefused: "Could not connect over WebSocket: {reason}",
  withCode: "{message} (code {code})",
  noWebSocket: "This browser lacks what the WebSocket transport needs (WebSocket, AudioWorklet).",
  // Who draws the avatar (avatar/client.js).
  voiceOnly: "Voice only: this browser cannot draw the avatar",
  cannotDraw:
    "This server leaves drawing the avatar to the browser, and this one cannot ({why}): you hear the voice only.",
  noWebGL2: "no WebGL2",
  "avatarMode.client": "avatar: drawn in your browser (WebGL)",
  "avatarMode.video": "avatar: video from the server",
  "avatarMode.none": "avatar: not shown (this browser cannot draw it)",
  // The "Last turn" panel (latency.js).
  "metric.first_audio_after_speech_end_ms": "You stopped → first audio",
  "metric.first_audio_sent_ms": "First audio sent",
  "metric.first_frame_sent_ms": "First frame sent",
  "metric.vad_hangover_ms": "End-of-speech wait",
  "metric.decision_to_first_audio_sent_ms": "Turn decided → first audio sent",
  "metric.pause_to_asr_ms": "You stopped → recognition starts",
  "metric.asr_early_ms": "Speech recognition (at the pause)",
  "metric.asr_to_llm_ms": "Words → LLM starts",
  "metric.asr_ms": "Speech recognition left at the end",
  "metric.llm_first_token_ms": "LLM first token",
  "metric.tts_first_audio_ms": "TTS first audio",
  "metric.avatar_first_frame_ms": "Avatar first frame",
  "metric.first_audio_after_asr_ms": "ASR start → first audio",
  "metric.speculated": "Reply prepared during the pause (1 = yes)",
  "metric.speculations_dropped": "Replies prepared and dropped",
};

const ZH = {
  connection: "连接",
  conversation: "对话",
  dismiss: "关闭",
  avatar: "数字人",
  avatarVideo: "数字人视频",
  pressStartBefore: "点击",
  pressStartAfter: "即可对话",
  syntheticLabel: "AI 生成的动画形象，并非真人录像",
  start: "开始",
  stop: "停止",
  muteMic: "麦克风静音",
  unmuteMic: "打开麦克风",
  interrupt: "打断",
  message: "消息",
  typeMessage: "输入消息",
  send: "发送",
  lastTurnLatency: "上一轮的延迟",
  lastTurn: "上一轮",
  turnNumber: "（第 {turn} 轮）",
  metricsEmpty: "第一次回复后显示各环节耗时。",
  "state.idle": "未连接",
  "state.connecting": "连接中",
  "state.connected": "已连接",
  "state.failed": "连接失败",
  "state.listening": "聆听中",
  "state.thinking": "思考中",
  "state.speaking": "说话中",
  you: "你",
  youTyped: "你（输入）",
  avatarSpeaker: "数字人",
  interrupted: " —— 已打断",
  stoppedBeforeAWord: "一个字还没说就停下了",
  error: "错误",
  notConnected: "未连接。",
  sessionEnded: "会话已结束。",
  switchingToWebSocket: "WebRTC {why}：正在切换到 WebSocket。",
  micDenied: "麦克风权限被拒绝——请在浏览器的网站设置中允许，或在下方输入文字。",
  noMic: "没有找到麦克风——你可以在下方输入文字。",
  micError: "无法打开麦克风（{name}：{message}）——你可以在下方输入文字。",
  micSendError: "无法发送麦克风的声音（{error}）——你可以在下方输入文字。",
  insecure:
    "麦克风只能在安全的页面上使用：请通过 https:// 打开本页（用 --self-signed 启动服务器，" +
    "或为它配置证书和私钥），或在服务器本机上以 http://localhost 打开。你仍然可以在下方输入文字。",
  loading: "服务器仍在加载模型——就绪后会立即连接…",
  loadingGaveUp: "服务器仍在加载模型——请过几秒再试。",
  full: "服务器已满——请稍后再试。",
  failed:
    "连接失败——浏览器无法访问服务器的媒体端口。跨网络使用时，服务器可能需要 STUN 或 TURN 服务器" +
    "（配置中的 server.ice_servers）。",
  unreachable: "无法连接服务器——`avatarchat serve` 在运行吗？",
  couldNotConnect: "无法连接：{error}",
  healthCheck: "健康检查：HTTP {status}",
  refused: "服务器拒绝了连接：{message}",
  needsToken: "此服务器需要带令牌的访问链接（…/?token=…）：请向服务器的管理者索取（用 `avatarchat token` 生成）。",
  badToken: "此服务器需要带令牌的访问链接，而此链接的令牌已过期或不属于此服务器：请向服务器的管理者索取新链接。",
  closedByServer: "服务器结束了会话（闲置太久或服务器已停止）。点击“开始”即可再次对话。",
  serverEnded: "服务器结束了会话：{reason}",
  clickToHear: "点击页面任意位置即可听到数字人的声音。",
  connectingWebRTC: "正在通过 WebRTC 连接…",
  connectedWebRTC: "已通过 WebRTC 连接",
  fallingBack: "WebRTC 无法连接——正在切换到 WebSocket…",
  connectingWebSocket: "正在通过 WebSocket 连接…",
  connectedNoUdp: "已通过 WebSocket 连接（UDP 似乎被阻断）",
  connectedFallback: "已通过 WebSocket 连接（WebRTC 无法连接）",
  connectedWebSocket: "已通过 WebSocket 连接（页面链接指定）",
  noUdpAnswer: "在 {s} 秒内没有收到任何 UDP 应答（UDP 似乎被阻断）",
  iceFailed: "找不到通往服务器的网络路径（ICE 失败）",
  notConnectedIn: "在 {s} 秒内未能连接",
  fallbackFailed: "连接失败——WebRTC 无法访问服务器的媒体端口（UDP 似乎被阻断），备用的 WebSocket 也无法连接。",
  webSocketFailed: "无法通过 WebSocket 连接——`avatarchat serve` 在运行吗？此链接仍然有效吗？",
  webSocketRefused: "无法通过 WebSocket 连接：{reason}",
  withCode: "{message}（代码 {code}）",
  noWebSocket: "此浏览器缺少 WebSocket 传输所需的功能（WebSocket、AudioWorklet）。",
  voiceOnly: "仅有声音：此浏览器无法绘制数字人",
  cannotDraw: "此服务器让浏览器自己绘制数字人，而此浏览器无法绘制（{why}）：你只能听到声音。",
  noWebGL2: "不支持 WebGL2",
  "avatarMode.client": "数字人：由你的浏览器绘制（WebGL）",
  "avatarMode.video": "数字人：服务器发送的视频",
  "avatarMode.none": "数字人：未显示（此浏览器无法绘制）",
  "metric.first_audio_after_speech_end_ms": "你说完 → 第一声",
  "metric.first_audio_sent_ms": "第一段音频发出",
  "metric.first_frame_sent_ms": "第一帧画面发出",
  "metric.vad_hangover_ms": "说完后的等待",
  "metric.decision_to_first_audio_sent_ms": "判定说完 → 第一段音频发出",
  "metric.pause_to_asr_ms": "你说完 → 开始识别",
  "metric.asr_early_ms": "语音识别（停顿时）",
  "metric.asr_to_llm_ms": "识别出的话 → 大模型开始",
  "metric.asr_ms": "说完后剩余的语音识别",
  "metric.llm_first_token_ms": "大模型第一个词元",
  "metric.tts_first_audio_ms": "语音合成第一段音频",
  "metric.avatar_first_frame_ms": "数字人第一帧",
  "metric.first_audio_after_asr_ms": "开始识别 → 第一声",
  "metric.speculated": "停顿时已预备回复（1 = 是）",
  "metric.speculations_dropped": "预备后丢弃的回复",
};

// Exported for the tests: every language has every key.
export const STRINGS = { en: EN, zh: ZH };
// The <html lang> of each: zh-CN makes browsers pick Simplified Chinese glyphs and fonts.
const HTML_LANG = { en: "en", zh: "zh-CN" };

let current = "en";
let source = "default"; // "query" | "server" | "browser" | "default"

// "en" or "zh" for a language tag (en-GB, zh_TW, ZH-Hans…), null for any other.
export function supported(tag) {
  const base = String(tag || "").trim().toLowerCase().split(/[-_]/)[0];
  return Object.hasOwn(STRINGS, base) ? base : null;
}

// The current language ("en" | "zh") and where it came from.
export function language() {
  return { lang: current, source };
}

// Whether the page has words for `key` (a server's state it does not know shows as it is).
export function has(key) {
  return Object.hasOwn(EN, key);
}

export function t(key, vars = {}) {
  const table = STRINGS[current];
  const text = Object.hasOwn(table, key) ? table[key] : Object.hasOwn(EN, key) ? EN[key] : key;
  return text.replace(/\{(\w+)\}/g, (whole, name) => (Object.hasOwn(vars, name) ? String(vars[name]) : whole));
}

// Shows `key`'s text in `el`, and remembers the key so that a change of language redraws it.
export function setText(el, key, vars = null) {
  el.dataset.i18n = key;
  if (vars) el.dataset.i18nVars = JSON.stringify(vars);
  else delete el.dataset.i18nVars;
  el.textContent = t(key, vars || {});
}

// Shows text that is no key's (the server's own words, a user's): a change of language keeps it.
export function setLiteral(el, text) {
  delete el.dataset.i18n;
  delete el.dataset.i18nVars;
  el.textContent = text;
}

// The attributes a key may fill: `data-i18n-title="key"` sets `title` to `t(key)`, and so on.
const ATTRIBUTES = ["title", "aria-label", "placeholder"];

// Redraws every element under `root` that names a key.
export function localize(root = document) {
  for (const el of root.querySelectorAll("[data-i18n]")) {
    el.textContent = t(el.dataset.i18n, el.dataset.i18nVars ? JSON.parse(el.dataset.i18nVars) : {});
  }
  for (const attribute of ATTRIBUTES) {
    for (const el of root.querySelectorAll(`[data-i18n-${attribute}]`)) {
      el.setAttribute(attribute, t(el.getAttribute(`data-i18n-${attribute}`)));
    }
  }
}

// Switches the page to `lang` ("en" | "zh"; anything else is ignored and returns false).
// `from` says who chose it. The chat log's cut-reply marks are CSS (style.css reads these
// custom properties).
export function setLanguage(lang, from) {
  if (!Object.hasOwn(STRINGS, lang)) return false;
  current = lang;
  source = from;
  const html = document.documentElement;
  html.lang = HTML_LANG[lang];
  html.style.setProperty("--t-interrupted", JSON.stringify(t("interrupted")));
  html.style.setProperty("--t-stopped-before-a-word", JSON.stringify(t("stoppedBeforeAWord")));
  localize();
  return true;
}

// The language the page's link asks for (`?lang=`), or null (none, or one not supported).
export function queryLanguage() {
  return supported(new URLSearchParams(location.search).get("lang"));
}

// The first of the browser's languages that the page has, or null.
export function browserLanguage() {
  const tags = navigator.languages?.length ? navigator.languages : [navigator.language];
  for (const tag of tags) {
    const lang = supported(tag);
    if (lang) return lang;
  }
  return null;
}
