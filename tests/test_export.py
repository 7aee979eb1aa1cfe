"""Artist outputs: textures, the textured OBJ, mesh.glb (Khronos validator), the offline viewer (headless
Chromium), the gallery, `fit3dmm export` and `retarget`. The maths on synthetic cases, the rest on real
photos from the shared folder."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import trimesh
from click.testing import CliRunner

from fit3dmm.cli import main
from fit3dmm.gltf import accessor_array, read_glb, write_glb
from fit3dmm.texture import extract_texture, split_seams
from tools import missing, validate_glb

PHOTO = "photos/000050.jpg"
EXPRESSION_PHOTO = "expressions/3ddfa_v3_1.jpg"


# --- maths on synthetic cases -------------------------------------------------------------------------


def _quad(facing: float = 1.0):
    """A 2x2-pixel-per-texel square: two triangles spanning photo pixels 8..56, at depth 10, whose UVs cover
    the left half of the texture square; ``facing`` -1 turns its normals away from the camera."""
    screen = np.array([[8, 8, 10], [56, 8, 10], [56, 56, 10], [8, 56, 10]], np.float32)
    triangles = np.array([[0, 1, 2], [0, 2, 3]])
    uv = np.array([[0.0, 1.0], [0.5, 1.0], [0.5, 0.0], [0.0, 0.0]], np.float32)  # the image's top row is v = 1
    normals = np.tile([0.0, 0.0, -facing], (4, 1)).astype(np.float32)  # camera frame: -z faces the camera
    return screen, triangles, uv, normals


def test_split_seams_gives_one_uv_per_vertex():
    triangles = np.array([[0, 1, 2], [0, 2, 3]])
    face_uv = np.array([[0, 1, 2], [4, 2, 3]])  # vertex 0 has two texture coordinates: a seam
    uv = np.random.default_rng(0).random((5, 2)).astype(np.float32)
    split = split_seams(triangles, face_uv, uv)
    assert len(split.vertex) == 5
    assert np.array_equal(split.vertex[split.triangles], triangles)
    assert np.array_equal(split.uv[split.triangles], uv[face_uv])


def test_texture_takes_the_photo_where_seen_and_the_albedo_elsewhere():
    screen, triangles, uv, normals = _quad()
    photo = np.zeros((64, 64, 3), np.uint8)
    photo[:, :32] = (200, 40, 40)
    photo[:, 32:] = (40, 40, 200)
    albedo = np.full((4, 3), 0.5, np.float32)
    tex = extract_texture(photo, screen, normals, triangles, triangles, uv, albedo, size=64)
    # The quad's left half (photo red) lands in texture columns ~0-15, its right half (blue) in ~16-31.
    assert np.abs(tex[30, 6].astype(int) - (200, 40, 40)).max() <= 3
    assert np.abs(tex[30, 26].astype(int) - (40, 40, 200)).max() <= 3
    assert (tex[:, 48:] == 0).all()  # outside the layout and beyond the bleed: untouched
    # Turned away from the camera: nothing is taken from the photo; the albedo fills in, scaled to no photo.
    away = extract_texture(photo, screen, normals * -1, triangles, triangles, uv, albedo, size=64)
    assert np.abs(away[30, 6].astype(int) - 128).max() <= 1
    # Occluded pixels (hair, say) are not taken either.
    hidden = extract_texture(photo, screen, normals, triangles, triangles, uv, albedo,
                             occluded=np.ones((64, 64), bool), size=64)
    assert np.abs(hidden[30, 6].astype(int) - 128).max() <= 1


def test_texture_mirror_fills_the_side_the_photo_did_not_see():
    screen, triangles, uv, normals = _quad()
    photo = np.full((64, 64, 3), (220, 10, 10), np.uint8)
    photo[:, :20] = (10, 220, 10)  # the seen half: green, then red (so the albedo, brought to its mean, is neither)
    occluded = np.zeros((64, 64), bool)
    occluded[:, 32:] = True  # the quad's right half is hidden
    albedo = np.full((4, 3), 0.5, np.float32)
    # The mirror rectangle is the quad's UV square: its left half mirrors onto its right half.
    tex = extract_texture(photo, screen, normals, triangles, triangles, uv, albedo, occluded, (0.0, 0.0, 0.5, 1.0),
                          size=64)
    assert np.abs(tex[30, 28].astype(int) - (10, 220, 10)).max() <= 3
    plain = extract_texture(photo, screen, normals, triangles, triangles, uv, albedo, occluded, size=64)
    assert np.abs(plain[30, 28].astype(int) - (10, 220, 10)).max() > 50  # without it: the albedo


def test_a_model_without_uvs_exports_vertex_colours(ict_model, tmp_path):
    from dataclasses import replace

    from fit3dmm.export import Head
    from fit3dmm.models import FaceModel
    from fit3dmm.outputs import write_head

    model = FaceModel(replace(ict_model.data, uv=None, face_uv=None))
    albedo = np.tile([0.8, 0.6, 0.5], (model.data.n_vertices, 1)).astype(np.float32)
    head = Head(model, np.zeros(model.n_id, np.float32), np.zeros(model.n_exp, np.float32), albedo)
    write_head(head, tmp_path, ("textured", "glb"), "no uv", {})
    mesh = trimesh.load(tmp_path / "textured" / "mesh.obj", process=False)
    assert np.allclose(mesh.visual.vertex_colors[:, :3], (204, 153, 128), atol=1)
    doc, binary = read_glb(tmp_path / "mesh.glb")
    attributes = doc["meshes"][0]["primitives"][0]["attributes"]
    assert "TEXCOORD_0" not in attributes and "images" not in doc
    assert np.allclose(accessor_array(doc, binary, attributes["COLOR_0"]), albedo)


def test_sparse_morph_targets_round_trip(tmp_path):
    verts = np.random.default_rng(1).random((20, 3)).astype(np.float32) * 10
    targets = np.zeros((2, 20, 3), np.float32)
    targets[0, 3] = (1, 2, 3)
    targets[1, 7:9] = 0.5
    write_glb(tmp_path / "a.glb", verts, np.array([[0, 1, 2], [2, 3, 4]]), targets, ["a", "b"], 100.0,
              weights=np.array([0.25, 0.0]))
    doc, binary = read_glb(tmp_path / "a.glb")
    prim = doc["meshes"][0]["primitives"][0]
    for k in range(2):
        acc = doc["accessors"][prim["targets"][k]["POSITION"]]
        assert acc["sparse"]["count"] == (1, 2)[k]
        assert np.allclose(accessor_array(doc, binary, prim["targets"][k]["POSITION"]), targets[k] / 100)
    assert doc["meshes"][0]["weights"] == [0.25, 0.0]


# --- real photos, through the CLI ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def results(shared_dir, tmp_path_factory):
    """Two photos fitted with every export (short fits: these tests are about the files)."""
    out = tmp_path_factory.mktemp("export") / "out"
    photos = [shared_dir / "data" / p for p in (PHOTO, EXPRESSION_PHOTO)]
    result = CliRunner().invoke(main, ["fit", *map(str, photos), "-o", str(out), "--iterations", "20"])
    assert result.exit_code == 0, result.output
    return out


def test_fit_writes_a_textured_obj_that_trimesh_loads_with_its_texture(results, shared_dir):
    folder = results / "000050"
    tex = cv2.imread(str(folder / "textured" / "texture.png"))
    assert tex.shape == (1024, 1024, 3)
    mesh = trimesh.load(folder / "textured" / "mesh.obj", process=False)
    assert isinstance(mesh.visual, trimesh.visual.TextureVisuals)
    assert mesh.visual.material.image.size == (1024, 1024)
    assert mesh.visual.uv.shape == (len(mesh.vertices), 2)
    # The same surface as mesh.obj (split at UV seams: more vertices, the same triangles).
    plain = trimesh.load(folder / "mesh.obj", process=False)
    assert len(mesh.faces) == len(plain.faces) and len(mesh.vertices) > len(plain.vertices)
    assert np.allclose(np.sort(np.unique(mesh.vertices.round(4), axis=0), 0),
                       np.sort(np.unique(plain.vertices.round(4), axis=0), 0), atol=1e-3)
    # The texture holds the photo: a textured render in the photo's pose looks like the photo over the face.
    photo = cv2.imread(str(shared_dir / "data" / PHOTO)).astype(np.float32)
    labels = cv2.imread(str(folder / "target_labels.png"), cv2.IMREAD_UNCHANGED)
    params = json.loads((folder / "params.json").read_text())
    from fit3dmm.export import photo_screen_from

    screen = photo_screen_from(mesh.vertices.astype(np.float32), params["camera"])
    x = screen[:, 0].round().astype(int).clip(0, photo.shape[1] - 1)
    y = screen[:, 1].round().astype(int).clip(0, photo.shape[0] - 1)
    rotation = np.asarray(params["camera"]["rotation"]).reshape(3, 3)
    facing = mesh.vertex_normals @ rotation.T  # camera frame (params.json's rotation includes the axis flip)
    skin = (labels[y, x] == 1) & (facing[:, 2] < -0.7)
    uv = mesh.visual.uv[skin]
    texel = tex[((1 - uv[:, 1]) * 1024).astype(int).clip(0, 1023), (uv[:, 0] * 1024).astype(int).clip(0, 1023)]
    seen = photo[y[skin], x[skin]]
    # Skin vertices facing the camera carry the photo's colour (up to blur, and a few hidden ones).
    assert np.median(np.abs(texel.astype(np.float32) - seen).mean(1)) < 8


def test_glb_is_valid_small_and_carries_the_arkit_expression(results):
    folder = results / "000050"
    glb = folder / "mesh.glb"
    assert glb.stat().st_size <= 12 * 2**20
    report = validate_glb(glb)
    assert report["issues"]["numErrors"] == 0, report["issues"]["messages"][:5]
    assert report["info"]["hasTextures"] and report["info"]["hasMorphTargets"]
    doc, binary = read_glb(glb)
    mesh = doc["meshes"][0]
    names = mesh["extras"]["targetNames"]
    expression = json.loads((folder / "expression.json").read_text())
    assert names == list(expression) and len(names) == 53 and {"jawOpen", "eyeBlink_L", "mouthSmile_R"} <= set(names)
    assert np.allclose(mesh["weights"], list(expression.values()), atol=1e-4)
    params = json.loads((folder / "params.json").read_text())
    assert np.allclose(mesh["weights"], np.asarray(params["coefficients"]["exp"]).reshape(-1), atol=1e-4)
    # Metres: an adult head is 0.1 to 0.4 m across.
    positions = accessor_array(doc, binary, mesh["primitives"][0]["attributes"]["POSITION"])
    assert 0.1 < np.ptp(positions[:, 0]) < 0.4


def test_viewer_renders_offline_and_its_sliders_morph_the_head(results):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright (the test extra)")
    chromium = shutil.which("chromium")
    if chromium is None:
        missing("Debian's chromium")
    page_file = results / "000050" / "index.html"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", "--enable-unsafe-swiftshader", "--use-angle=swiftshader"])
        page = browser.new_page(viewport={"width": 1000, "height": 700})
        problems, requests = [], []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:", "blob:")) else None)
        page.goto(page_file.as_uri())
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        canvas = page.locator("canvas")

        def picture() -> np.ndarray:
            return cv2.imdecode(np.frombuffer(canvas.screenshot(), np.uint8), cv2.IMREAD_COLOR).astype(np.int16)

        before = picture()
        background = before[2, 2]
        assert (np.abs(before - background).max(2) > 30).mean() > 0.05  # a head, not a blank canvas
        page.locator("input[data-name='jawOpen']").fill("1")
        after = picture()
        assert (np.abs(after - before).max(2) > 30).mean() > 0.002  # the mouth opened
        browser.close()
    assert problems == [] and requests == []


def test_blender_loads_the_textured_obj_and_the_glb(results, tmp_path):
    """Blender's own importers. Optional: it runs where `blender` is on the PATH (Debian's package is
    ~500 MB, so `make test` does not install it)."""
    blender = shutil.which("blender")
    if blender is None:
        pytest.skip("Blender is not installed (an optional check)")
    folder = results / "000050"
    out = tmp_path / "blender.json"
    run = subprocess.run([blender, "-b", "--factory-startup", "--python", str(Path(__file__).parent / "blender_import.py"),
                          "--", str(folder / "textured" / "mesh.obj"), str(folder / "mesh.glb"), str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and out.is_file(), run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["obj"]["uv_layers"] == 1 and [img[1:] for img in report["obj"]["images"]] == [[1024, 1024]]
    assert report["glb"]["uv_layers"] == 1 and [img[1:] for img in report["glb"]["images"]] == [[1024, 1024]]
    expression = json.loads((folder / "expression.json").read_text())
    keys = report["glb"]["shape_keys"]
    assert list(keys) == list(expression)  # ARKit names, as Blender's shape keys
    assert np.allclose(list(keys.values()), np.clip(list(expression.values()), 0, 1), atol=1e-3)
    assert 0.15 < report["glb"]["height_m"] < 0.5  # metres


def test_gallery_links_every_result(results):
    page = (results / "index.html").read_text()
    for stem in ("000050", "3ddfa_v3_1"):
        assert f'href="{stem}/index.html"' in page and f'src="{stem}/overlay.png"' in page


def test_export_rewrites_glb_and_obj_from_params(results, tmp_path):
    folder = tmp_path / "000050"
    shutil.copytree(results / "000050", folder)
    original = cv2.imread(str(folder / "textured" / "texture.png")).astype(np.int16)
    shutil.rmtree(folder / "textured")
    (folder / "mesh.glb").unlink()
    result = CliRunner().invoke(main, ["export", str(folder)])
    assert result.exit_code == 0, result.output
    assert (folder / "mesh.glb").is_file() and (folder / "textured" / "mesh.mtl").is_file()
    # The texture is taken again from the photo with the saved pose: as at fit time, up to the albedo's
    # rounding in mesh.ply.
    again = cv2.imread(str(folder / "textured" / "texture.png")).astype(np.int16)
    assert np.abs(again - original).mean() < 1.0
    doc, _ = read_glb(folder / "mesh.glb")
    assert doc["meshes"][0]["extras"]["targetNames"] == list(json.loads((folder / "expression.json").read_text()))
    bad = CliRunner().invoke(main, ["export", str(tmp_path / "nothing")])
    assert bad.exit_code == 1 and "params.json missing" in bad.output and "Traceback" not in bad.output


@pytest.mark.parametrize("damage", ["params", "camera", "ply"])
def test_export_of_a_damaged_result_is_one_clear_error(results, tmp_path, damage):
    folder = tmp_path / "r"
    shutil.copytree(results / "000050", folder)
    shutil.rmtree(folder / "textured")  # so that export reads the camera, mesh.ply and the photo
    params = json.loads((folder / "params.json").read_text())
    if damage == "params":
        (folder / "params.json").write_text('{"coefficients": ')
    elif damage == "camera":
        params["camera"]["translation"] = ["x", 1, 2]
        (folder / "params.json").write_text(json.dumps(params))
    else:
        (folder / "mesh.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 99999\n")
    result = CliRunner().invoke(main, ["export", str(folder)])
    assert result.exit_code == 1 and "Traceback" not in result.output and result.exception is None or isinstance(
        result.exception, SystemExit)
    assert str(folder) in result.output and not (folder / "textured").exists()


def test_retarget_puts_one_face_with_another_expression(results, tmp_path):
    out = tmp_path / "rt"
    a, b = results / "000050", results / "3ddfa_v3_1"
    result = CliRunner().invoke(main, ["retarget", "--identity", str(a), "--expression", str(b), "-o", str(out)])
    assert result.exit_code == 0, result.output
    got, wanted = (json.loads((f / "expression.json").read_text()) for f in (out, b))
    assert list(got) == list(wanted) and np.allclose(list(got.values()), list(wanted.values()), atol=2e-5)
    doc, binary = read_glb(out / "mesh.glb")
    doc_a, binary_a = read_glb(a / "mesh.glb")
    pos = lambda d, bn: accessor_array(d, bn, d["meshes"][0]["primitives"][0]["attributes"]["POSITION"])  # noqa: E731
    assert np.allclose(pos(doc, binary), pos(doc_a, binary_a))  # A's neutral face
    assert cv2.imread(str(out / "textured" / "texture.png")).shape == (1024, 1024, 3)
    assert validate_glb(out / "mesh.glb")["issues"]["numErrors"] == 0
    again = CliRunner().invoke(main, ["retarget", "--identity", str(a), "--expression", str(b), "-o", str(out)])
    assert again.exit_code == 1 and "exists" in again.output


def test_export_list_chooses_the_outputs(shared_dir, tmp_path):
    out = tmp_path / "out"
    photo = shared_dir / "data" / PHOTO
    result = CliRunner().invoke(main, ["fit", str(photo), "-o", str(out), "--iterations", "5", "--export", "glb,expression"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "000050").iterdir()) == ["expression.json", "landmarks.json", "mesh.glb",
                                                                 "params.json"]
    bad = CliRunner().invoke(main, ["fit", str(photo), "-o", str(out), "--export", "glb,fbx"])
    assert bad.exit_code == 1 and "fbx" in bad.output


def test_ctrl_c_during_an_obj_export_interrupts_after_it(tmp_path):
    """trimesh's OBJ exporter catches BaseException around its slow parts, which swallowed a Ctrl-C landing
    there (the batch went on; the file lost its normals). held_interrupts holds SIGINT off until the export
    is written whole, then delivers it."""
    import os
    import signal

    from fit3dmm.export import held_interrupts

    mesh = trimesh.creation.icosphere(subdivisions=3)
    mesh.vertex_normals  # noqa: B018 - cached, so that the exporter formats them (its swallowing part)
    # Ctrl-C's usual handling for the test's duration: a process started in the background by a
    # non-interactive shell (as `make test &` is) inherits SIGINT ignored, and then nothing is delivered.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with held_interrupts():
                os.kill(os.getpid(), signal.SIGINT)  # arrives during the export
                text = trimesh.exchange.obj.export_obj(mesh, include_normals=True)
                (tmp_path / "m.obj").write_text(text)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert text.count("\nvn ") == len(mesh.vertices) and text.count("\nf ") == len(mesh.faces)
