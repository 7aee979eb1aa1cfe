"""Offline HTML pages: a result's 3D viewer (index.html) and a batch's gallery (OUT/index.html).

The viewer is one self-contained file: three.js r147 (MIT, shipped in ``fit3dmm/data/viewer`` with its
licence; the last release with classic-script builds, which pages opened from disk can load, since
browsers refuse ES modules and fetch() on file:// URLs), the GLB and the images inlined as base64. It
needs no network and no server: double-click it. One slider per expression morphs the head live.
"""

from __future__ import annotations

import base64
import html
import json
from importlib import resources
from pathlib import Path
from urllib.parse import quote

_SCRIPTS = ("three.min.js", "GLTFLoader.js", "OrbitControls.js")

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} - fit3dmm</title>
<style>
body {{ margin: 0; font: 14px system-ui, sans-serif; display: flex; height: 100vh; background: #f4f4f4; }}
#view {{ flex: 1; position: relative; min-width: 0; }}
#view canvas {{ display: block; width: 100%; height: 100%; }}
#side {{ width: 340px; overflow-y: auto; padding: 10px 14px; background: #fff; border-left: 1px solid #ddd; }}
#side h1 {{ font-size: 16px; margin: 4px 0 8px; word-break: break-all; }}
#side img {{ width: 100%; margin: 4px 0; }}
.row {{ display: flex; align-items: center; gap: 6px; font-size: 12px; }}
.row label {{ width: 130px; overflow: hidden; text-overflow: ellipsis; }}
.row input {{ flex: 1; }} .row span {{ width: 34px; text-align: right; }}
button {{ margin: 6px 6px 6px 0; }}
#status {{ position: absolute; left: 10px; bottom: 8px; color: #666; }}
</style>
</head>
<body>
<div id="view"><div id="status">loading</div></div>
<div id="side">
<h1>{title}</h1>
{images}
<h2 style="font-size:14px">Expression</h2>
<button id="fitted">fitted</button><button id="neutral">neutral</button>
<div id="sliders"></div>
</div>
<script id="glb" type="application/octet-stream">{glb}</script>
{scripts}
<script>
"use strict";
const names = {names};
const fitted = {weights};
const view = document.getElementById("view");
const renderer = new THREE.WebGLRenderer({{ antialias: true, preserveDrawingBuffer: true }});
renderer.outputEncoding = THREE.sRGBEncoding;
renderer.setPixelRatio(window.devicePixelRatio);
view.prepend(renderer.domElement);
const scene = new THREE.Scene();
scene.background = new THREE.Color(0x30343a);
scene.add(new THREE.HemisphereLight(0xffffff, 0x444444, 0.9));
const key = new THREE.DirectionalLight(0xffffff, 0.6);
key.position.set(0.5, 0.6, 1.0);
scene.add(key);
const camera = new THREE.PerspectiveCamera(30, 1, 0.01, 100);
const controls = new THREE.OrbitControls(camera, renderer.domElement);
let head = null;
function render() {{ renderer.render(scene, camera); }}
function resize() {{
  const w = view.clientWidth, h = view.clientHeight;
  renderer.setSize(w, h, false);
  camera.aspect = w / Math.max(h, 1);
  camera.updateProjectionMatrix();
  render();
}}
controls.addEventListener("change", render);
window.addEventListener("resize", resize);
const sliders = [];
function setWeights(values) {{
  values.forEach((v, k) => {{ sliders[k].value = v; sliders[k].nextSibling.textContent = Number(v).toFixed(2); }});
  if (head) {{ values.forEach((v, k) => {{ head.morphTargetInfluences[k] = Number(v); }}); }}
  render();
}}
const box = document.getElementById("sliders");
names.forEach((name, k) => {{
  const row = document.createElement("div");
  row.className = "row";
  const label = document.createElement("label");
  label.textContent = name;
  label.title = name;
  const input = document.createElement("input");
  input.type = "range"; input.min = 0; input.max = 1; input.step = 0.01; input.value = fitted[k];
  input.dataset.name = name;
  const value = document.createElement("span");
  input.addEventListener("input", () => {{
    value.textContent = Number(input.value).toFixed(2);
    if (head) head.morphTargetInfluences[k] = Number(input.value);
    render();
  }});
  row.append(label, input, value);
  box.append(row);
  sliders.push(input);
}});
document.getElementById("fitted").onclick = () => setWeights(fitted);
document.getElementById("neutral").onclick = () => setWeights(fitted.map(() => 0));
const text = document.getElementById("glb").textContent.trim();
const bytes = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
new THREE.GLTFLoader().parse(bytes.buffer, "", (gltf) => {{
  scene.add(gltf.scene);
  gltf.scene.traverse((o) => {{ if (o.isMesh && o.morphTargetInfluences) head = o; }});
  const bounds = new THREE.Box3().setFromObject(gltf.scene);
  const centre = bounds.getCenter(new THREE.Vector3());
  const size = bounds.getSize(new THREE.Vector3()).length();
  controls.target.copy(centre);
  camera.position.copy(centre).add(new THREE.Vector3(0, 0, 1.9 * size));
  camera.near = size / 100; camera.far = size * 100;
  document.getElementById("status").textContent = "drag to turn, scroll to zoom";
  setWeights(fitted);
  resize();
  document.body.dataset.ready = "1";
}}, (error) => {{
  document.getElementById("status").textContent = "cannot show the head: " + error;
  console.error(error);
}});
resize();
</script>
</body>
</html>
"""

_GALLERY = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>fit3dmm results</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 16px; background: #f4f4f4; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 12px; }}
.card {{ background: #fff; border: 1px solid #ddd; padding: 8px; }}
.card img {{ width: 100%; aspect-ratio: 1; object-fit: cover; background: #eee; }}
.card a {{ margin-right: 8px; }}
.name {{ font-weight: bold; word-break: break-all; margin: 4px 0; }}
</style>
</head>
<body>
<h1>fit3dmm: {count} results</h1>
<div class="grid">
{cards}
</div>
</body>
</html>
"""


def _asset(name: str) -> str:
    return (resources.files("fit3dmm.data") / "viewer" / name).read_text(encoding="utf-8")


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def viewer_html(title: str, glb: bytes, names: list[str], weights: list[float], images: dict[str, bytes]) -> str:
    """The viewer page of one head: ``glb`` (mesh.glb's bytes) with expression ``names`` and their fitted
    ``weights``; ``images``: caption -> PNG bytes shown beside it."""
    scripts = "\n".join(f"<script>\n{_asset(name)}\n</script>" for name in _SCRIPTS)
    figures = "\n".join(f'<img alt="{html.escape(caption)}" title="{html.escape(caption)}" src="{_data_uri(png)}">'
                        for caption, png in images.items())
    # json.dumps output is safe inside <script> once "</" cannot close it.
    as_js = lambda value: json.dumps(value).replace("</", "<\\/")  # noqa: E731
    return _PAGE.format(title=html.escape(title), images=figures, glb=base64.b64encode(glb).decode(), scripts=scripts,
                        names=as_js(names), weights=as_js([round(float(w), 4) for w in weights]))


def gallery_html(folders: list[Path], out: Path) -> str:
    """The gallery of result ``folders`` (inside ``out``): a card per result with its overlay and links to
    its viewer and files (those present), all relative so the folder can move."""
    cards = []
    for folder in folders:
        rel = html.escape(quote(folder.relative_to(out).as_posix()))  # a stem may hold '#', '?' or spaces
        links = [(name, label) for name, label in (("index.html", "3D viewer"), ("mesh.glb", "GLB"),
                                                  ("textured/mesh.obj", "textured OBJ"), ("mesh.obj", "OBJ"),
                                                  ("params.json", "params"))
                 if (folder / name).is_file()]
        thumb = next((n for n in ("overlay.png", "textured/texture.png") if (folder / n).is_file()), None)
        image = f'<img loading="lazy" alt="" src="{rel}/{thumb}">' if thumb else '<img alt="">'
        target = f"{rel}/index.html" if (folder / "index.html").is_file() else f"{rel}/"
        anchors = " ".join(f'<a href="{rel}/{n}">{label}</a>' for n, label in links)
        cards.append(f'<div class="card"><a href="{target}">{image}</a><div class="name">{html.escape(folder.name)}'
                     f"</div>{anchors}</div>")
    return _GALLERY.format(count=len(folders), cards="\n".join(cards))
