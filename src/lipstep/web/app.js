// lipstep's page: a portrait (the server's or an upload), speech (a file or the microphone), the avatar streamed
// over WS /v1/stream and drawn as its frames arrive, in time with the speech, or an mp4 from POST /v1/generate.
// Plain ES module, no build step and no other origin: everything it loads comes from this server.
"use strict";

const $ = (id) => document.getElementById(id);
const PIECE_SECONDS = 0.04;  // audio is sent in 40-ms pieces, each once it has been "spoken" (a live pace)
const text = new TextDecoder();

const page = {
  health: null,      // GET /health: model, fps, sample_rate, limits
  portrait: null,    // {id, file}: the chosen portrait (its id names it in a stream; the file goes to /v1/generate)
  speech: null,      // {pcm: Float32Array at the model's rate, blob, name, seconds}
  session: null,     // the latest stream (see `startStream`)
  errors: [],        // every server error shown: {status, message}
};
window.lipstep = page;  // for tests and the console

// ------------------------------------------------------------------------------------------- messages

function say(message) {
  $("status").textContent = message;
}

function showError(message) {
  const box = $("error");
  box.hidden = false;  // shown first, then filled: screen readers announce the alert's new text
  box.textContent = message;
}

function serverError(status, message) {
  page.errors.push({status, message});
  const item = document.createElement("li");
  item.textContent = `${status}: ${message}`;
  $("error-log").append(item);
  $("stat-errors").textContent = String(page.errors.length);
  showError(`Server error ${status}: ${message}`);
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

class ServerError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function fetchOk(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (e) {
    throw new ServerError(0, `cannot reach the server (${e.message})`);
  }
  if (!response.ok) {
    let message = response.statusText;
    try {
      message = (await response.json()).error || message;
    } catch (e) { /* not JSON: keep the status text */ }
    throw new ServerError(response.status, message);
  }
  return response;
}

function report(e) {
  if (e instanceof ServerError) serverError(e.status, e.message);
  else showError(e.message);
}

// ------------------------------------------------------------------------------------------- portraits

function addPortrait(id, label, file) {
  const item = document.createElement("label");
  const radio = Object.assign(document.createElement("input"), {type: "radio", name: "portrait", value: id});
  radio.addEventListener("change", () => { page.portrait = {id, file}; });
  const image = Object.assign(document.createElement("img"), {src: `/v1/portraits/${id}`, alt: ""});  // named by the caption
  const caption = document.createElement("span");
  caption.textContent = label;
  item.append(radio, image, caption);
  $("portrait-list").append(item);
  radio.checked = true;
  page.portrait = {id, file};
}

async function uploadPortrait(file) {
  clearError();
  const form = new FormData();
  form.append("image", file, file.name || "portrait");
  say(`Uploading ${file.name}…`);
  try {
    const body = await (await fetchOk("/v1/portraits", {method: "POST", body: form})).json();
    addPortrait(body.id, `Yours: ${file.name}`, file);
    say(`Portrait ${file.name} uploaded and cropped to ${body.size} px.`);
  } catch (e) {
    report(e);
    say("The portrait was not accepted.");
  }
}

async function portraitFile() {
  if (page.portrait.file) return page.portrait.file;
  const blob = await (await fetchOk(`/v1/portraits/${page.portrait.id}`)).blob();
  return new File([blob], `${page.portrait.id}.png`, {type: "image/png"});
}

// ------------------------------------------------------------------------------------------- speech

async function decodeSpeech(file) {
  const rate = page.health.sample_rate;
  const context = new OfflineAudioContext(1, 1, rate);  // decodes and resamples to the model's rate
  let buffer;
  try {
    buffer = await context.decodeAudioData(await file.arrayBuffer());
  } catch (e) {
    throw new Error(`This browser cannot decode ${file.name} as audio; try a wav file.`);
  }
  const pcm = new Float32Array(buffer.length);
  for (let c = 0; c < buffer.numberOfChannels; c++) {
    const channel = buffer.getChannelData(c);
    for (let i = 0; i < pcm.length; i++) pcm[i] += channel[i] / buffer.numberOfChannels;
  }
  return {pcm, blob: file, name: file.name, seconds: pcm.length / rate};
}

function setSpeech(speech) {
  page.speech = speech;
  $("speech-info").textContent = `Speech: ${speech.name}, ${speech.seconds.toFixed(2)} s.`;
}

function wavBlob(pcm, rate) {
  const view = new DataView(new ArrayBuffer(44 + 2 * pcm.length));
  const put = (offset, s) => [...s].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  put(0, "RIFF"); view.setUint32(4, 36 + 2 * pcm.length, true); put(8, "WAVE");
  put(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, 2 * rate, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); put(36, "data"); view.setUint32(40, 2 * pcm.length, true);
  pcm.forEach((x, i) => view.setInt16(44 + 2 * i, Math.max(-1, Math.min(1, x)) * 32767, true));
  return new Blob([view], {type: "audio/wav"});
}

// Linear resampling of a live signal, block by block (used only when the browser will not capture at the model's
// rate itself); a box filter first, so downsampling by k does not fold everything above the new Nyquist rate.
class Resampler {
  constructor(from, to) {
    this.step = from / to;
    this.width = Math.max(1, Math.floor(this.step));
    this.history = new Float32Array(this.width);
    this.position = 0;  // where the next output sample falls, in input samples of the current block
    this.previous = 0;
  }

  push(block) {
    if (this.step === 1) return block;
    const smooth = new Float32Array(block.length);
    for (let i = 0; i < block.length; i++) {
      this.history.copyWithin(0, 1);
      this.history[this.width - 1] = block[i];
      smooth[i] = this.history.reduce((a, b) => a + b, 0) / this.width;
    }
    const out = [];
    while (this.position < smooth.length - 1) {
      const i = Math.floor(this.position), frac = this.position - i;
      const a = i < 0 ? this.previous : smooth[i];
      out.push(a + (smooth[i + 1] - a) * frac);
      this.position += this.step;
    }
    this.position -= smooth.length;
    this.previous = smooth[smooth.length - 1];
    return Float32Array.from(out);
  }
}

// ------------------------------------------------------------------------------------------- the stream

function option(id) {
  const value = $(id).value.trim();
  return value === "" ? null : Number(value);
}

function startMessage() {
  const message = {type: "start", portrait_id: page.portrait.id, pcm: "f32le",
                   sample_rate: page.health.sample_rate, format: $("opt-format").value, seed: option("opt-seed") ?? 0};
  const steps = option("opt-steps");
  if (steps !== null) message.steps = steps;
  const preview = option("opt-preview");
  if (preview) message.preview_every = preview;
  return message;
}

function resetStats() {
  for (const id of ["stat-first", "stat-latency", "stat-fps", "stat-time"]) $(id).textContent = "–";
  $("stat-frames").textContent = "0";
  $("stat-dropped").textContent = "0";
}

function updateStats(s) {
  const now = performance.now();
  while (s.arrivals.length && s.arrivals[0] < now - 1000) s.arrivals.shift();
  $("stat-frames").textContent = String(s.times.length);
  $("stat-fps").textContent = s.times.length ? String(s.arrivals.length) : "–";
  $("stat-dropped").textContent = String(s.dropped);
  if (s.firstLatency !== null) $("stat-first").textContent = `${Math.round(s.firstLatency * 1000)} ms`;
  if (s.latency !== null) $("stat-latency").textContent = `${Math.round(s.latency * 1000)} ms`;
  if (s.times.length) $("stat-time").textContent = `${s.times[s.times.length - 1].toFixed(2)} s`;
}

function setBusy(busy, live = false) {
  $("stream-button").disabled = busy;
  $("mic-button").disabled = busy;
  $("stop-button").disabled = !busy;
  $("mic-button").textContent = live ? "Talking live…" : "Talk live (microphone)";
}

// One session: the socket, what was sent (audio time 0 began at `t0`, performance.now() ms), what came back.
function startStream(source) {
  clearError();
  if (!page.health) return showError("The server has not answered yet; reload the page.");
  if (!page.portrait) return showError("Choose or upload a portrait first.");
  if (source === "file" && !page.speech) return showError("Choose a speech file first, or talk live.");
  if (page.session) {
    finishSession(page.session);
    page.session.audio.close();
  }
  const s = {source, t0: null, sent: 0, ended: null, failed: false, closed: false, stopping: false,
             times: [], arrivals: [], queue: [], drawn: 0, dropped: 0, firstLatency: null, latency: null,
             playStart: null, audio: new AudioContext(), timer: null, mic: null};
  page.session = s;
  resetStats();
  setBusy(true, source === "mic");
  const open = source === "mic" ? openMicrophone(s) : Promise.resolve();
  open.then(() => connect(s)).catch((e) => { showError(e.message); finishSession(s); });
}

function connect(s) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  s.ws = new WebSocket(`${scheme}://${location.host}/v1/stream`);
  s.ws.binaryType = "arraybuffer";
  s.ws.onopen = () => { s.ws.send(JSON.stringify(startMessage())); say("Starting the stream…"); };
  s.ws.onmessage = (event) => typeof event.data === "string" ? onText(s, JSON.parse(event.data)) : onFrame(s, event.data);
  s.ws.onclose = (event) => onClose(s, event);
  requestAnimationFrame(() => render(s));
}

function onText(s, message) {
  if (message.type === "ready") {
    say(`Streaming (session ${message.session}, ${message.fps} fps, ${message.size} px).`);
    s.t0 = performance.now();
    if (s.source === "file") sendFile(s);
    else s.mic.live = true;
  } else if (message.type === "error") {
    s.failed = true;
    serverError(message.status, message.message);
  } else if (message.type === "end") {
    s.ended = message;
    say(`Stream finished: ${message.frames} frames for ${message.seconds.toFixed(2)} s of speech, NFE ${message.nfe}.`);
  }
}

function sendFile(s) {
  const pcm = page.speech.pcm, rate = page.health.sample_rate, piece = Math.round(PIECE_SECONDS * rate);
  const tick = () => {
    if (s.ws.readyState !== WebSocket.OPEN || s.stopping) return;
    const spoken = Math.min(pcm.length, Math.floor((performance.now() - s.t0) / 1000 * rate));
    while (s.sent + piece <= spoken || (spoken === pcm.length && s.sent < pcm.length)) {
      const end = Math.min(s.sent + piece, pcm.length);
      s.ws.send(pcm.slice(s.sent, end));  // float32 in the platform's byte order: little-endian on every browser's CPU
      s.sent = end;
    }
    if (s.sent >= pcm.length) endStream(s);
    else s.timer = setTimeout(tick, 10);
  };
  tick();
}

function endStream(s) {
  s.stopping = true;
  clearTimeout(s.timer);
  if (s.mic) stopMicrophone(s);
  if (s.ws && s.ws.readyState === WebSocket.OPEN) s.ws.send(JSON.stringify({type: "end"}));
}

function onFrame(s, data) {
  const arrival = performance.now();
  const n = new DataView(data).getUint32(0, true);
  const header = JSON.parse(text.decode(new Uint8Array(data, 4, n)));
  const type = header.format === "png" ? "image/png" : "image/jpeg";
  const frame = {index: header.index, time: header.time, bitmap: null};
  s.times.push(header.time);
  s.arrivals.push(arrival);
  s.latency = (arrival - s.t0) / 1000 - header.time;  // behind the moment the frame's audio began to be spoken
  if (s.firstLatency === null) {
    s.firstLatency = (arrival - s.t0) / 1000;
    startPlayback(s);
  }
  s.queue.push(frame);
  createImageBitmap(new Blob([new Uint8Array(data, 4 + n)], {type}))
    .then((bitmap) => { frame.bitmap = bitmap; })
    .catch(() => { frame.bitmap = "bad"; showError(`frame ${header.index} could not be decoded`); });
  updateStats(s);
}

// Frame time t is shown when the speech being played reaches t: the audio clock runs from the first frame's
// arrival plus the playback delay, and the speech (a file's) is scheduled on the same clock.
function startPlayback(s) {
  const delay = Math.max(0, option("opt-delay") ?? 250) / 1000;
  const running = s.audio.state === "running";
  s.clock = running ? () => s.audio.currentTime : () => performance.now() / 1000;
  s.playStart = s.clock() + delay;
  if (running && s.source === "file" && $("opt-audio").checked) {
    const pcm = page.speech.pcm;
    const buffer = s.audio.createBuffer(1, pcm.length, page.health.sample_rate);
    buffer.copyToChannel(pcm, 0);
    const player = s.audio.createBufferSource();
    player.buffer = buffer;
    player.connect(s.audio.destination);
    player.start(s.playStart);
  }
}

function render(s) {
  if (s.playStart !== null) {
    const now = s.clock() - s.playStart;
    let show = null;
    while (s.queue.length && s.queue[0].time <= now && s.queue[0].bitmap) {
      if (show) drop(s, show);  // a later frame is due already: this one is never shown
      show = s.queue.shift();
    }
    if (show && show.bitmap !== "bad") draw(s, show);
    updateStats(s);
  }
  const done = s.closed && !s.queue.length;
  if (done || page.session !== s) finishSession(s);
  else requestAnimationFrame(() => render(s));
}

function draw(s, frame) {
  const canvas = $("avatar"), context = canvas.getContext("2d");
  context.imageSmoothingEnabled = true;
  context.drawImage(frame.bitmap, 0, 0, canvas.width, canvas.height);
  frame.bitmap.close();
  s.drawn += 1;
}

function drop(s, frame) {
  s.dropped += 1;
  if (frame.bitmap !== "bad") frame.bitmap.close();
}

function onClose(s, event) {
  s.closed = true;
  if (s.mic) stopMicrophone(s);
  if (!s.ended && !s.failed && !s.finished && !(s.stopping && event.code === 1000)) {  // finished: the user gave up
    serverError(event.code, `the stream closed before its end (WebSocket code ${event.code})`);
  }
  if (s.failed) say("The stream was refused.");
}

function finishSession(s) {
  if (s.finished) return;
  s.finished = true;
  clearTimeout(s.timer);
  if (s.mic) stopMicrophone(s);
  if (s.ws && s.ws.readyState <= WebSocket.OPEN) s.ws.close();
  if (page.session === s) setBusy(false);
}

function stop() {
  const s = page.session;
  if (!s) return;
  if (!s.stopping) endStream(s);  // the server finishes the frames of the audio it has
  else finishSession(s);          // a second press: stop waiting
}

// ------------------------------------------------------------------------------------------- microphone

async function openMicrophone(s) {
  if (!navigator.mediaDevices || !window.AudioWorkletNode) {
    throw new Error("This browser cannot capture the microphone here (it needs http://127.0.0.1 or https).");
  }
  const rate = page.health.sample_rate;
  const stream = await navigator.mediaDevices.getUserMedia({audio: {channelCount: 1, echoCancellation: true}});
  let context, source;
  try {  // capture at the model's rate if the browser resamples for us, else resample here
    context = new AudioContext({sampleRate: rate});
    source = context.createMediaStreamSource(stream);
  } catch (e) {
    if (context) context.close();
    context = new AudioContext();
    source = context.createMediaStreamSource(stream);
  }
  await context.audioWorklet.addModule("/static/pcm-worklet.js");
  const tap = new AudioWorkletNode(context, "pcm-tap");
  s.mic = {stream, context, live: false, resampler: new Resampler(context.sampleRate, rate), pending: [], kept: []};
  tap.port.onmessage = (event) => onMicBlock(s, event.data);
  source.connect(tap).connect(context.destination);  // the tap outputs silence; connected so it is pulled
}

function onMicBlock(s, block) {
  const mic = s.mic;
  if (!mic || !mic.live || s.stopping || s.ws.readyState !== WebSocket.OPEN) return;
  mic.pending.push(...mic.resampler.push(block));
  const piece = Math.round(PIECE_SECONDS * page.health.sample_rate);
  while (mic.pending.length >= piece) {
    const chunk = Float32Array.from(mic.pending.splice(0, piece));
    s.ws.send(chunk);
    mic.kept.push(chunk);
    s.sent += chunk.length;
  }
}

function stopMicrophone(s) {
  const mic = s.mic;
  if (!mic || mic.stopped) return;
  mic.stopped = true;
  mic.stream.getTracks().forEach((track) => track.stop());
  mic.context.close();
  if (mic.pending.length && s.ws && s.ws.readyState === WebSocket.OPEN) {
    const chunk = Float32Array.from(mic.pending.splice(0));
    s.ws.send(chunk);
    mic.kept.push(chunk);
  }
  const total = mic.kept.reduce((n, c) => n + c.length, 0);
  if (total) {
    const pcm = new Float32Array(total);
    mic.kept.reduce((at, c) => { pcm.set(c, at); return at + c.length; }, 0);
    const rate = page.health.sample_rate;
    setSpeech({pcm, blob: wavBlob(pcm, rate), name: "recording.wav", seconds: total / rate});
  }
}

// ------------------------------------------------------------------------------------------- the mp4

async function generate() {
  clearError();
  if (!page.portrait) return showError("Choose or upload a portrait first.");
  if (!page.speech) return showError("Choose a speech file first, or talk live.");
  const form = new FormData();
  const button = $("generate-button");
  button.disabled = true;
  say("Making the mp4…");
  const started = performance.now();
  try {
    form.append("image", await portraitFile());
    form.append("audio", page.speech.blob, page.speech.name);
    form.append("seed", String(option("opt-seed") ?? 0));
    const steps = option("opt-steps");
    if (steps !== null) form.append("steps", String(steps));
    const response = await fetchOk("/v1/generate", {method: "POST", body: form});
    const url = URL.createObjectURL(await response.blob());
    const video = $("video"), link = $("video-link");
    if (video.src) URL.revokeObjectURL(video.src);
    video.src = url;
    link.href = url;
    link.hidden = false;
    const seconds = (performance.now() - started) / 1000;
    say(`mp4 ready: ${response.headers.get("X-Lipstep-Frames")} frames, made in ${seconds.toFixed(1)} s.`);
  } catch (e) {
    report(e);
    say("No mp4.");
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------------------------------- start

async function init() {
  $("stream-button").addEventListener("click", () => startStream("file"));
  $("mic-button").addEventListener("click", () => startStream("mic"));
  $("stop-button").addEventListener("click", stop);
  $("generate-button").addEventListener("click", generate);
  $("portrait-file").addEventListener("change", (event) => {
    if (event.target.files.length) uploadPortrait(event.target.files[0]);
  });
  $("speech-file").addEventListener("change", async (event) => {
    if (!event.target.files.length) return;
    clearError();
    try {
      setSpeech(await decodeSpeech(event.target.files[0]));
    } catch (e) {
      showError(e.message);
    }
  });
  try {
    page.health = await (await fetchOk("/health")).json();
    const h = page.health;
    $("model-info").textContent = `Model ${h.model ?? "(in memory)"} (${h.kind}), ${h.image_size} px at ${h.fps} fps, ` +
      `speech at ${h.sample_rate} Hz; ${h.limits.max_sessions} generations at once.`;
    const {portraits} = await (await fetchOk("/v1/portraits")).json();
    portraits.forEach((p, i) => addPortrait(p.id, `Example ${i + 1}`, null));
    if (portraits.length) document.querySelector("#portrait-list input").checked = true;
    page.portrait = portraits.length ? {id: portraits[0].id, file: null} : null;
    page.ready = true;
  } catch (e) {
    report(e);
    $("model-info").textContent = "The server did not answer.";
  }
}

init();
