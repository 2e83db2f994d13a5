// imgcls in-browser classifier: onnxruntime-web (WebAssembly, single thread) runs the exported model on images the
// person picks, drops or pastes, and on the bundled samples. Nothing leaves the page. Loaded as classic scripts
// (before this one): ort/ort.wasm.min.js (the `ort` global), ort/ort-wasm.js (IMGCLS_ORT: the WebAssembly binary and
// Emscripten glue as data), model.js (IMGCLS_MODEL: the ONNX file, base64), imgcls.js (IMGCLS: classes,
// preprocessing, samples). Script data rather than fetch(): a file:// page may not fetch local files.
"use strict";

(function () {
  const info = window.IMGCLS;
  const pre = info.preprocess;
  const S = pre.image_size;
  const C = pre.in_chans;
  const TOPK = Math.min(5, info.classes.length);
  const $ = (sel) => document.querySelector(sel);
  const status = $("#status");

  function bytesOf(b64) {
    if (Uint8Array.fromBase64) return Uint8Array.fromBase64(b64);
    const s = atob(b64);
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }

  // ---------------------------------------------------------------------------------------------------------------
  // imgcls's eval preprocessing (src/imgcls/data/images.py to_uint8, transforms.py build_eval_transform)
  // ---------------------------------------------------------------------------------------------------------------

  // The resampling filters of Pillow / torchvision's antialiased resize: [support, kernel]
  const FILTERS = {
    bilinear: [1, (x) => (x < 0 ? -x : x) < 1 ? 1 - (x < 0 ? -x : x) : 0],
    bicubic: [
      2,
      (x) => {
        const a = -0.5;
        x = Math.abs(x);
        if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
        if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
        return 0;
      },
    ],
  };

  // One separable pass over `plane` (h rows of w values) along x (or y): Pillow's ImagingResampleHorizontal.
  function resample(plane, w, h, outLen, alongX, filter) {
    const inLen = alongX ? w : h;
    const out = new Float32Array(alongX ? outLen * h : w * outLen);
    const scale = inLen / outLen;
    if (filter === "nearest") {
      // torch's "nearest": source index floor(dst * scale)
      for (let o = 0; o < outLen; o++) {
        const i = Math.min(inLen - 1, Math.floor(o * scale));
        if (alongX) for (let y = 0; y < h; y++) out[y * outLen + o] = plane[y * w + i];
        else for (let x = 0; x < w; x++) out[o * w + x] = plane[i * w + x];
      }
      return out;
    }
    const [support, kernel] = FILTERS[filter];
    const fscale = Math.max(scale, 1);
    const ss = support * fscale;
    for (let o = 0; o < outLen; o++) {
      const center = (o + 0.5) * scale;
      const lo = Math.max(0, Math.floor(center - ss + 0.5));
      const hi = Math.min(inLen, Math.floor(center + ss + 0.5));
      const weights = [];
      let total = 0;
      for (let i = lo; i < hi; i++) {
        const wgt = kernel((i - center + 0.5) / fscale);
        weights.push(wgt);
        total += wgt;
      }
      for (let k = 0; k < weights.length; k++) weights[k] = total ? weights[k] / total : 0;
      const n = alongX ? h : w;
      for (let j = 0; j < n; j++) {
        let acc = 0;
        for (let k = 0; k < weights.length; k++) {
          const i = lo + k;
          acc += weights[k] * (alongX ? plane[j * w + i] : plane[i * w + j]);
        }
        // uint8 between and after the passes, as Pillow and torch's uint8 path round
        const v = Math.min(255, Math.max(0, Math.round(acc)));
        if (alongX) out[j * outLen + o] = v;
        else out[o * w + j] = v;
      }
    }
    return out;
  }

  function resize(plane, w, h) {
    const f = pre.interpolation || "bilinear";
    if (w !== S) plane = resample(plane, w, h, S, true, f);
    if (h !== S) plane = resample(plane, S, h, S, false, f);
    return plane;
  }

  // An image (anything drawImage takes) -> normalised float32 [1, C, S, S], and the model-size uint8 planes
  function preprocess(source, w, h) {
    const canvas = document.createElement("canvas");
    canvas.width = w;
    canvas.height = h;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.fillStyle = "#ffffff"; // transparent pixels composited on white, as imgcls decodes them
    ctx.fillRect(0, 0, w, h);
    ctx.drawImage(source, 0, 0, w, h);
    const rgba = ctx.getImageData(0, 0, w, h).data;
    const planes = [];
    const n = w * h;
    if (C === 1) {
      const l = new Float32Array(n);
      for (let i = 0; i < n; i++) {
        // Pillow's convert("L"): ITU-R 601-2 luma in 16-bit fixed point, rounded
        l[i] = (rgba[4 * i] * 19595 + rgba[4 * i + 1] * 38470 + rgba[4 * i + 2] * 7471 + 0x8000) >> 16;
      }
      planes.push(l);
    } else {
      for (let c = 0; c < 3; c++) {
        const p = new Float32Array(n);
        for (let i = 0; i < n; i++) p[i] = rgba[4 * i + c];
        planes.push(p);
      }
    }
    const input = new Float32Array(C * S * S);
    const small = [];
    planes.forEach((p, c) => {
      const r = resize(p, w, h);
      small.push(r);
      for (let i = 0; i < S * S; i++) input[c * S * S + i] = (r[i] / 255 - pre.mean[c]) / pre.std[c];
    });
    return { tensor: new ort.Tensor("float32", input, [1, C, S, S]), small };
  }

  function softmax(logits) {
    const m = Math.max(...logits);
    const e = logits.map((v) => Math.exp(v - m));
    const s = e.reduce((a, b) => a + b, 0);
    return e.map((v) => v / s);
  }

  // ---------------------------------------------------------------------------------------------------------------
  // The page
  // ---------------------------------------------------------------------------------------------------------------

  let session = null;
  let queue = Promise.resolve(); // one model call at a time: onnxruntime-web sessions are not re-entrant

  function card(title, label) {
    const el = document.createElement("article");
    el.className = "card";
    el.innerHTML =
      '<div class="pics"><img class="photo" alt=""><canvas class="input" title="what the model sees"></canvas></div>' +
      '<div class="body"><h3></h3><p class="truth"></p><ol class="bars"></ol><p class="err"></p></div>';
    el.querySelector("h3").textContent = title;
    el.querySelector(".truth").textContent = label ? "true label: " + label : "";
    $("#cards").prepend(el);
    return el;
  }

  function showInput(el, small) {
    const cv = el.querySelector("canvas.input");
    cv.width = S;
    cv.height = S;
    const ctx = cv.getContext("2d");
    const img = ctx.createImageData(S, S);
    for (let i = 0; i < S * S; i++) {
      const r = small[0][i];
      img.data[4 * i] = r;
      img.data[4 * i + 1] = C === 3 ? small[1][i] : r;
      img.data[4 * i + 2] = C === 3 ? small[2][i] : r;
      img.data[4 * i + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }

  function showProbs(el, probs) {
    const order = probs.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]).slice(0, TOPK);
    const ol = el.querySelector(".bars");
    ol.innerHTML = "";
    for (const [p, i] of order) {
      const li = document.createElement("li");
      li.innerHTML = '<span class="name"></span><span class="bar"><span></span></span><span class="pct"></span>';
      li.querySelector(".name").textContent = info.classes[i];
      li.querySelector(".bar span").style.width = (100 * p).toFixed(1) + "%";
      li.querySelector(".pct").textContent = (100 * p).toFixed(1) + "%";
      ol.append(li);
    }
    el.dataset.top1 = info.classes[order[0][1]];
    el.dataset.probs = JSON.stringify(probs);
    el.classList.add("done");
  }

  function classify(el, source, w, h) {
    queue = queue.then(async () => {
      try {
        const { tensor, small } = preprocess(source, w, h);
        showInput(el, small);
        const out = await session.run({ [session.inputNames[0]]: tensor });
        showProbs(el, softmax(Array.from(out[session.outputNames[0]].data)));
      } catch (e) {
        el.querySelector(".err").textContent = "could not classify: " + (e && e.message ? e.message : e);
        el.classList.add("failed");
      }
    });
    return queue;
  }

  function classifyUrl(title, url, label) {
    const el = card(title, label);
    const img = el.querySelector("img.photo");
    img.src = url;
    return img.decode().then(
      () => classify(el, img, img.naturalWidth, img.naturalHeight),
      () => {
        el.querySelector(".err").textContent = "not an image this browser can decode";
        el.classList.add("failed");
      },
    );
  }

  function classifyFiles(files) {
    for (const f of files) {
      if (!f.type.startsWith("image/")) {
        const el = card(f.name, null);
        el.querySelector(".err").textContent = "not an image (" + (f.type || "unknown type") + ")";
        el.classList.add("failed");
        continue;
      }
      classifyUrl(f.name, URL.createObjectURL(f), null);
    }
  }

  function describe() {
    $("#model").textContent = info.model;
    const facts = [
      [info.classes.length + " classes", info.classes.join(", ")],
      [S + "×" + S + (C === 1 ? " grey" : " RGB"), "images are resized (" + (pre.interpolation || "bilinear") + ") to this"],
      ["trained on " + (info.dataset || "?"), info.source_checkpoint || ""],
      ["onnxruntime-web " + window.IMGCLS_ORT.version, "WebAssembly, one thread, in this page"],
    ];
    const ul = $("#facts");
    for (const [text, title] of facts) {
      const li = document.createElement("li");
      li.textContent = text;
      li.title = title;
      ul.append(li);
    }
  }

  async function start() {
    describe();
    // threads need cross-origin isolation (impossible from file://); the binary and the glue come from script data
    ort.env.wasm.numThreads = 1;
    ort.env.wasm.wasmBinary = bytesOf(window.IMGCLS_ORT.wasm);
    const glue = new Blob([window.IMGCLS_ORT.glue], { type: "text/javascript" });
    ort.env.wasm.wasmPaths = { mjs: URL.createObjectURL(glue) };
    session = await ort.InferenceSession.create(bytesOf(window.IMGCLS_MODEL), { executionProviders: ["wasm"] });
    status.textContent = "ready: the model runs in this page, offline";
    status.dataset.ready = "1";
    const picker = $("#pick");
    picker.addEventListener("change", () => classifyFiles(picker.files));
    document.addEventListener("dragover", (e) => e.preventDefault());
    document.addEventListener("drop", (e) => {
      e.preventDefault();
      classifyFiles(e.dataTransfer.files);
    });
    document.addEventListener("paste", (e) => classifyFiles(e.clipboardData.files));
    const samples = info.samples.slice().reverse(); // cards are prepended: the first sample ends up first
    for (const s of samples) await classifyUrl(s.name, s.url, s.label);
    await queue;
    status.dataset.samples = "done";
  }

  start().catch((e) => {
    status.textContent = "the model could not start: " + (e && e.message ? e.message : e);
    status.dataset.ready = "error";
    console.error(e);
  });
})();
