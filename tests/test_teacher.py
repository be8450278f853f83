"""Teacher stage: mesh topology, warps, the geometric teacher (honesty checks on real faces),
ONNX adapters (conventions and signature errors on tiny in-test graphs), augmentations, configs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pocketswap.core.errors import ConfigError, ModelSignatureError
from pocketswap.faces.raster import EDGE_REACH, mesh_maps
from pocketswap.faces.shape import transfer_shape
from pocketswap.faces.types import INNER_LIP, OUTER_LIP
from pocketswap.faces.warp import (
    MeshWarp,
    border_anchors,
    triangulate,
    warp_identity,
    warp_with_anchors,
)
from pocketswap.teacher import augment as aug
from pocketswap.teacher import occluders
from pocketswap.teacher.base import AlignedRecord, load_teacher
from pocketswap.teacher.geometric import GeometricConfig, GeometricTeacher
from pocketswap.teacher.mesh import EYE_RINGS, FLIP_MAP, MIDLINE, derive_flip_map, flip_landmarks

SIZE = 224
NAMES = ("astronaut", "grace_hopper", "lfw_01", "lfw_12")


@pytest.fixture(scope="module")
def analysis():
    from pocketswap.teacher.analysis import FaceAnalysis
    from pocketswap.teacher.config import GenerateConfig

    return FaceAnalysis(GenerateConfig(size=SIZE))


@pytest.fixture(scope="module")
def records(analysis) -> dict[str, AlignedRecord]:
    from pocketswap.teacher.analysis import Source

    out = {}
    for name in NAMES:
        result = analysis(Source(name))
        assert isinstance(result, AlignedRecord), (name, result)
        out[name] = result
    return out


def _redetect(analysis, crop: np.ndarray):
    """(embedding, landmarks in crop pixels) of the face re-detected in a crop (padded for the detector)."""
    from pocketswap.faces.identity import embed_faces

    pad = SIZE // 4
    padded = cv2.copyMakeBorder(crop, pad, pad, pad, pad, cv2.BORDER_CONSTANT)
    face = analysis.analyzer.detect_one(padded)
    embedding = embed_faces(padded, [face], analysis.encoder)[0]
    return embedding, face.landmarks[:, :2] - pad


# -- mesh topology and warps ---------------------------------------------------------------------
def test_flip_map_is_a_mirror_involution():
    assert sorted(FLIP_MAP.tolist()) == list(range(468))
    assert (FLIP_MAP[FLIP_MAP] == np.arange(468)).all()
    assert sorted(np.flatnonzero(np.arange(468) == FLIP_MAP).tolist()) == sorted(MIDLINE)
    for right, left in [(33, 263), (61, 291), (234, 454), (78, 308), (70, 300), (133, 362)]:
        assert FLIP_MAP[right] == left


def test_flip_map_matches_a_redetected_mirror_and_rederivation(analysis, records):
    record = records["astronaut"]
    flipped = aug.flip_record(record)
    _, detected = _redetect(analysis, flipped.image)
    iod = aug.inter_ocular(record.landmarks)
    error = np.linalg.norm(detected - flipped.landmarks[:, :2], axis=1) / iod
    assert error.mean() < 0.05, error.mean()
    # Re-deriving the map from a symmetric geometry (a face averaged with its own mirror) gives FLIP_MAP.
    symmetric = (record.landmarks[:, :2] + flip_landmarks(record.landmarks, SIZE)[:, :2]) / 2.0
    assert (derive_flip_map(symmetric) == FLIP_MAP).mean() > 0.98


def test_mesh_warp_identity_and_translation(records):
    image = records["astronaut"].image
    points = records["astronaut"].landmarks[:, :2]
    warp = MeshWarp(points, (SIZE, SIZE))
    same = warp.warp(image, points)
    assert np.abs(same.astype(int) - image.astype(int))[warp.inside].max() <= 1
    shifted = warp.warp(image, points + np.array([3.0, 2.0]))  # sample 3 px right, 2 px down
    inner = cv2.erode(warp.inside.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    inner[SIZE - 4 :], inner[:, SIZE - 4 :] = False, False  # np.roll wraps where remap reflects
    expected = np.roll(image, shift=(-2, -3), axis=(0, 1))
    assert np.abs(shifted.astype(int) - expected.astype(int))[inner].max() <= 1
    # With border anchors the whole image is covered and the border stays fixed.
    anchors = border_anchors(SIZE, SIZE)
    assert MeshWarp(np.concatenate([points, anchors]), (SIZE, SIZE)).inside.all()
    moved = warp_with_anchors(image, points, points + 2.0)
    assert np.array_equal(moved[0], image[0])


def test_identity_texture_lands_on_the_frame_landmarks(records):
    """The warped-identity input: the identity's face moved onto another face's geometry."""
    identity, attribute = records["grace_hopper"], records["astronaut"]
    same = warp_identity(identity.image, identity.landmarks, identity.landmarks)
    inside = MeshWarp(identity.landmarks, (SIZE, SIZE)).inside
    assert np.abs(same.astype(int) - identity.image.astype(int))[inside].max() <= 1
    shifted = warp_identity(identity.image, identity.landmarks, identity.landmarks[:, :2] + np.array([4.0, 0.0]))
    inner = cv2.erode(inside.astype(np.uint8), np.ones((13, 13), np.uint8)) > 0
    expected = np.roll(identity.image, shift=4, axis=1)  # features sit 4 px further right
    assert np.abs(shifted.astype(int) - expected.astype(int))[inner].mean() <= 1.5
    onto = warp_identity(identity.image, identity.landmarks, attribute.landmarks)

    def eye(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:  # her right eye's box, resampled to 24x12
        corners = landmarks[[33, 133, 159, 145], :2]
        (x0, y0), (x1, y1) = np.floor(corners.min(0)).astype(int) - 3, np.ceil(corners.max(0)).astype(int) + 3
        return cv2.resize(image[y0:y1, x0:x1], (24, 12), interpolation=cv2.INTER_AREA).astype(int)

    hers = eye(identity.image, identity.landmarks)
    # Her eye now sits where the astronaut's is: her eye's pixels, not what her crop had at that place.
    assert (
        np.abs(eye(onto, attribute.landmarks) - hers).mean()
        < 0.5 * np.abs(eye(identity.image, attribute.landmarks) - hers).mean()
    )
    with pytest.raises(ValueError, match="finite"):
        warp_identity(identity.image, identity.landmarks, np.full((468, 2), np.nan))


def test_rasteriser_is_exact_for_an_affine_mesh(records):
    """Moving a real face's mesh by one affine map, every covered pixel samples that map's inverse, and the
    covered pixels are those whose centres lie in the mesh (its convex hull: a Delaunay mesh) or within
    EDGE_REACH of it."""
    src = records["grace_hopper"].landmarks[:, :2].astype(np.float64)
    triangles = triangulate(src)
    affine = np.array([[0.9, -0.2, 20.0], [0.15, 1.05, -6.0]])
    dst = src @ affine[:, :2].T + affine[:, 2]
    map_x, map_y, covered = mesh_maps(src, dst, triangles, (SIZE, SIZE))
    ys, xs = np.nonzero(covered)
    expected = cv2.invertAffineTransform(affine) @ np.stack([xs, ys, np.ones_like(xs)]).astype(np.float64)
    assert np.abs(map_x[ys, xs] - expected[0]).max() < 1e-3 and np.abs(map_y[ys, xs] - expected[1]).max() < 1e-3
    hull = cv2.convexHull(dst.astype(np.float32))
    grid_y, grid_x = np.mgrid[0:SIZE, 0:SIZE]
    distance = np.array(
        [
            cv2.pointPolygonTest(hull, (float(x), float(y)), True)
            for x, y in zip(grid_x.ravel(), grid_y.ravel(), strict=True)
        ]
    )
    inside = distance.reshape(SIZE, SIZE) >= -EDGE_REACH  # the mesh and the half pixel a rasteriser covers
    wrong = (covered > 0) != inside
    assert np.abs(distance.reshape(SIZE, SIZE)[wrong] + EDGE_REACH).max(initial=0.0) < 0.01
    assert (distance > 0).sum() < inside.sum() < (distance > -1).sum()
    assert map_x[~inside].tolist() == grid_x[~inside].astype(np.float32).tolist()  # outside: its own pixel


def test_rasteriser_samples_each_pixel_by_its_own_triangle(records):
    """On a real face moved onto another face's geometry, a pixel samples the barycentric map of the triangle
    whose interior holds its centre (found here by OpenCV's point-in-polygon test)."""
    src = records["grace_hopper"].landmarks[:, :2].astype(np.float64)
    dst = records["astronaut"].landmarks[:, :2].astype(np.float64)
    triangles = triangulate(src)
    map_x, map_y, covered = mesh_maps(src, dst, triangles, (SIZE, SIZE))
    rng = np.random.default_rng(0)
    checked = 0
    for y, x in rng.permutation(np.argwhere(covered > 0))[:300]:
        for triangle in triangles[::-1]:  # where triangles overlap the later one is drawn last and wins
            corners = dst[triangle].astype(np.float32)
            if cv2.pointPolygonTest(corners, (float(x), float(y)), True) > 1e-3:
                weights = np.linalg.solve(np.vstack([corners.T.astype(np.float64), np.ones(3)]), [x, y, 1.0])
                assert np.allclose([map_x[y, x], map_y[y, x]], weights @ src[triangle], atol=1e-3)
                checked += 1
                break
    assert checked > 250


# -- geometric teacher ---------------------------------------------------------------------------
def test_geometric_teacher_is_honest(analysis, records):
    """The output is closer to the identity than the attribute is (dlib cosine distance) and keeps
    the attribute's geometry (re-detected landmarks, error normalised by inter-ocular distance)."""
    teacher = GeometricTeacher(SIZE)
    closer, errors = [], []
    for id_name in NAMES:
        for attr_name in NAMES:
            if id_name == attr_name:
                continue
            identity, attribute = records[id_name], records[attr_name]
            out = teacher.swap(identity, attribute)
            e_id, _ = _redetect(analysis, identity.image)
            e_attr, l_attr = _redetect(analysis, attribute.image)
            e_out, l_out = _redetect(analysis, out.image)
            d_out = 1.0 - float(e_out @ e_id)
            d_attr = 1.0 - float(e_attr @ e_id)
            closer.append(d_out < d_attr)
            errors.append(np.linalg.norm(l_out - l_attr, axis=1).mean() / aug.inter_ocular(attribute.landmarks))
            if id_name in ("astronaut", "grace_hopper") and attr_name in ("astronaut", "grace_hopper"):
                assert d_out < 0.5 * d_attr, (id_name, attr_name, d_out, d_attr)
    assert all(closer), closer
    assert np.mean(errors) < 0.06 and np.max(errors) < 0.1, errors


def _swap_geometry(identity: AlignedRecord, attribute: AlignedRecord, config: GeometricConfig):
    """(the swap's landmarks, the attribute moved onto them): where the kept mouth and eyes must be."""
    dst = transfer_shape(identity.landmarks, attribute.landmarks, config.shape_transfer)
    return dst, MeshWarp(dst, (SIZE, SIZE)).warp(attribute.image, attribute.landmarks)


@pytest.mark.parametrize("shape_transfer", [0.0, 0.5])
def test_geometric_teacher_keeps_mouth_and_background(records, shape_transfer):
    config = GeometricConfig(shape_transfer=shape_transfer)
    identity, attribute = records["grace_hopper"], records["astronaut"]  # astronaut smiles with teeth
    out = GeometricTeacher(SIZE, config).swap(identity, attribute)
    assert out.image.shape == (SIZE, SIZE, 3) and out.image.dtype == np.uint8
    assert out.mask.shape == (SIZE, SIZE) and out.mask.dtype == np.float32
    assert out.mask.min() >= 0.0 and out.mask.max() <= 1.0
    outside = out.mask == 0
    assert np.array_equal(out.image[outside], attribute.image[outside])
    dst, moved = _swap_geometry(identity, attribute, config)  # without shape transfer: the attribute itself
    mouth = np.zeros((SIZE, SIZE), np.uint8)
    cv2.fillPoly(mouth, [np.round(dst[list(INNER_LIP), :2]).astype(np.int32)], 1)
    mouth = cv2.erode(mouth, np.ones((3, 3), np.uint8)) > 0
    assert mouth.sum() > 100  # the astronaut's mouth is open
    assert np.abs(out.image[mouth].astype(int) - moved[mouth].astype(int)).mean() < 2.0
    # The face region changed (it is a swap, not a copy).
    face = out.mask > 0.9
    assert np.abs(out.image[face].astype(int) - attribute.image[face].astype(int)).mean() > 10


def _polygon(landmarks: np.ndarray, rings) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    cv2.fillPoly(mask, [np.round(landmarks[list(r), :2]).astype(np.int32) for r in rings], 1)
    return cv2.erode(mask, np.ones((5, 5), np.uint8)) > 0


def test_geometric_teacher_keeps_the_attributes_eyeballs(records):
    """The eyes inside the lids are the attribute's (its gaze; moved with the lids where the identity's
    shape moves them), unless keep_eyes is off."""
    identity, attribute = records["grace_hopper"], records["astronaut"]
    dst, moved = _swap_geometry(identity, attribute, GeometricConfig())
    eyes = _polygon(dst, EYE_RINGS)
    assert eyes.sum() > 50

    def eye_change(**config) -> float:
        out = GeometricTeacher(SIZE, GeometricConfig(**config)).swap(identity, attribute).image
        return float(np.abs(out[eyes].astype(int) - moved[eyes].astype(int)).mean())

    assert eye_change() < 2.0
    assert eye_change(keep_eyes=False) > 8.0


@pytest.mark.parametrize("mode", ["global", "local"])
def test_geometric_colour_transfer_moves_the_skin_to_the_attributes(records, mode):
    """With colour transfer the swapped skin's mean CIELAB colour is the attribute's, not the identity's."""
    identity, attribute = records["lfw_01"], records["astronaut"]  # a grey face onto a colour photo
    skin = (GeometricTeacher(SIZE).mask(attribute) > 0.99) & ~_polygon(attribute.landmarks, [*EYE_RINGS, INNER_LIP])
    lab = lambda image: cv2.cvtColor(image, cv2.COLOR_RGB2LAB)[skin].astype(float).mean(0)  # noqa: E731
    only_colour = {"lips": "identity", "facial_hair": "none"}  # the colour transfer alone
    moved = GeometricTeacher(SIZE, GeometricConfig(color_transfer=mode, **only_colour)).swap(identity, attribute).image
    raw = GeometricTeacher(SIZE, GeometricConfig(color_transfer="none", **only_colour)).swap(identity, attribute).image
    target = lab(attribute.image)
    assert np.linalg.norm(lab(moved) - target) < 0.4 * np.linalg.norm(lab(raw) - target)


def test_a_colour_face_on_a_grey_frame_comes_out_grey(records):
    """The relight fades the identity's colour detail with its colour: Grace Hopper onto a grey photo is a grey
    face, not one with cyan lids and red creases (her colour detail about a skin mean the frame does not have)."""
    identity, attribute = records["grace_hopper"], records["lfw_12"]
    skin = (GeometricTeacher(SIZE).mask(attribute) > 0.99) & ~_polygon(attribute.landmarks, [*EYE_RINGS, INNER_LIP])
    chroma = lambda image: np.hypot(*(cv2.cvtColor(image, cv2.COLOR_RGB2LAB)[skin][:, 1:].astype(float) - 128).T)  # noqa: E731
    assert np.percentile(chroma(attribute.image), 99) < 2.0  # the frame is grey
    swapped = GeometricTeacher(SIZE).swap(identity, attribute).image
    assert np.percentile(chroma(swapped), 99) < 4.0
    assert np.percentile(chroma(identity.image), 50) > 10.0  # she is not


def test_shape_transfer_moves_the_features_and_keeps_the_expression(records):
    """Half-way shape transfer: the nose moves half-way to the identity's (aligned) nose and the eyes to the
    identity's place and width, keeping the attribute's opening; the mouth and the outline do not move."""
    from pocketswap.faces.align import similarity_transform, transform_points
    from pocketswap.faces.types import INNER_LIP, MOUTH_CORNERS

    identity, attribute = records["grace_hopper"].landmarks[:, :2], records["astronaut"].landmarks[:, :2]
    aligned = transform_points(identity, similarity_transform(identity, attribute))
    moved = transfer_shape(identity, attribute, 0.5)
    hull = cv2.convexHull(attribute.astype(np.float32), returnPoints=False).ravel()
    assert np.allclose(moved[hull], attribute[hull])
    nose = 1
    assert np.allclose(moved[nose], (attribute[nose] + aligned[nose]) / 2, atol=1e-3)
    assert np.linalg.norm(aligned[nose] - attribute[nose]) > 1.0  # the two noses differ: the test can fail

    lips = list({*OUTER_LIP, *INNER_LIP, MOUTH_CORNERS[0], MOUTH_CORNERS[1]})
    assert np.array_equal(moved[lips], attribute[lips])  # the mouth stays: the frame's teeth where the frame has them
    assert np.linalg.norm(aligned[lips] - attribute[lips], axis=1).mean() > 1.0  # the two mouths differ

    def eye(points):  # width, and opening (upper lid to lower lid) over width: a similarity keeps the ratio
        width = np.linalg.norm(points[33] - points[133])
        return width, np.linalg.norm(points[159] - points[145]) / width

    (width, opening), (attribute_width, attribute_opening) = eye(moved), eye(attribute)
    assert width == pytest.approx((attribute_width + eye(aligned)[0]) / 2, rel=0.02)
    assert opening == pytest.approx(attribute_opening, rel=1e-3)


def test_rigid_pieces_match_opencv_point_polygon_test(records):
    """The vectorised signed distance that picks each rigid piece agrees with cv2.pointPolygonTest."""
    from pocketswap.faces.raster import polygon_distances
    from pocketswap.faces.shape import RIGID_FEATURES

    rng = np.random.default_rng(0)
    for record in records.values():
        points = record.landmarks[:, :2].astype(np.float64) + rng.normal(0.0, 0.5, (468, 2))
        for contour, *_ in RIGID_FEATURES:
            polygon = points[list(contour)]
            expected = [cv2.pointPolygonTest(polygon.astype(np.float32), (float(x), float(y)), True) for x, y in points]
            assert np.allclose(polygon_distances(points, polygon), expected, atol=1e-3)


def test_warped_identity_carries_the_identity_shape(records):
    """``warp_identity(shape=s)`` is the warp onto the frame's landmarks moved to the identity's shape; 0 the frame's."""
    identity, attribute = records["grace_hopper"], records["astronaut"]
    plain = warp_identity(identity.image, identity.landmarks, attribute.landmarks)
    assert np.array_equal(warp_identity(identity.image, identity.landmarks, attribute.landmarks, shape=0.0), plain)
    moved = transfer_shape(identity.landmarks, attribute.landmarks, 0.5)
    shaped = warp_identity(identity.image, identity.landmarks, attribute.landmarks, shape=0.5)
    assert np.array_equal(shaped, warp_identity(identity.image, identity.landmarks, moved))
    assert np.abs(shaped.astype(int) - plain.astype(int)).mean() > 1.0  # the shape changed the input


@pytest.mark.parametrize("blend", ["membrane", "poisson", "laplacian", "alpha"])
def test_geometric_blends_run(records, blend):
    out = GeometricTeacher(SIZE, GeometricConfig(blend=blend, shape_transfer=0.3)).swap(
        records["lfw_01"], records["grace_hopper"]
    )
    assert out.image.shape == (SIZE, SIZE, 3)
    face = out.mask > 0.9
    assert np.abs(out.image[face].astype(int) - records["grace_hopper"].image[face].astype(int)).mean() > 5


def test_geometric_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="'blend'"):
        GeometricConfig.from_dict({"blend": "magic"})
    with pytest.raises(ConfigError, match="'feathr'"):
        GeometricConfig.from_dict({"feathr": 0.1})
    with pytest.raises(ConfigError, match="'color_transfer'"):
        GeometricConfig.from_dict({"color_transfer": "poisson"})
    with pytest.raises(ConfigError, match="'color_transfer'"):
        GeometricConfig.from_dict({"color_transfer": True})  # before "local" existed it was a bool
    with pytest.raises(ConfigError, match="'keep_mouth'"):
        GeometricConfig.from_dict({"keep_mouth": "yes"})
    with pytest.raises(ConfigError, match="'color_std_range'"):
        GeometricConfig.from_dict({"color_std_range": [1.5, 2.0]})
    teacher = load_teacher("geometric", 224, config={"blend": "laplacian"})
    assert isinstance(teacher, GeometricTeacher) and teacher.cfg.blend == "laplacian"
    assert teacher.config_hash() != load_teacher("geometric", 224).config_hash()
    with pytest.raises(ConfigError, match="geometric"):
        load_teacher("nonsense")


# -- ONNX adapters -------------------------------------------------------------------------------
class FakeArcFace:
    """Stands in for ArcFaceOnnxEncoder: 512-d embeddings derived from the chip's pixels."""

    chip_size = 112
    template = "arcface"

    def __init__(self, dim: int = 512) -> None:
        self.dim = dim
        self.chips: list[np.ndarray] = []

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        assert chips.shape[1:] == (112, 112, 3) and chips.dtype == np.uint8
        self.chips.append(chips)
        rng = np.random.default_rng(0)
        proj = rng.normal(size=(16 * 16 * 3, self.dim)).astype(np.float32)
        small = np.stack([cv2.resize(c, (16, 16), interpolation=cv2.INTER_AREA) for c in chips]).reshape(len(chips), -1)
        e = (small.astype(np.float32) / 255.0 - 0.5) @ proj * 3.0  # deliberately not unit norm
        return e.astype(np.float32)


def _swap_graph(path, image_name, embed_name, size, embed_dim=512, op="identity", emap=None, batch=1):
    """A tiny face-swap-shaped graph: output = f(image) + 0 * mean(embedding)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    dim0 = batch if batch else "N"
    image = helper.make_tensor_value_info(image_name, TensorProto.FLOAT, [dim0, 3, size, size])
    embed = helper.make_tensor_value_info(embed_name, TensorProto.FLOAT, [dim0, embed_dim])
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, [dim0, 3, size, size])
    inits = [
        numpy_helper.from_array(np.zeros((1, 1, 1, 1), np.float32), "zero"),
        numpy_helper.from_array(np.array([-1, 1, 1, 1], np.int64), "shape4"),
    ]
    nodes = [
        helper.make_node("ReduceMean", [embed_name], ["emb_mean"], axes=[1], keepdims=1),
        helper.make_node("Reshape", ["emb_mean", "shape4"], ["emb4"]),
        helper.make_node("Mul", ["emb4", "zero"], ["emb_zero"]),
    ]
    if op == "imagenet_to_unit":  # undo ImageNet normalisation: x * std + mean
        std = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
        mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
        inits += [numpy_helper.from_array(std, "std"), numpy_helper.from_array(mean, "mean")]
        nodes += [
            helper.make_node("Mul", [image_name, "std"], ["scaled"]),
            helper.make_node("Add", ["scaled", "mean"], ["img_out"]),
        ]
    else:
        nodes += [helper.make_node("Identity", [image_name], ["img_out"])]
    nodes += [helper.make_node("Add", ["img_out", "emb_zero"], ["output"])]
    if emap is not None:
        inits.append(numpy_helper.from_array(emap.astype(np.float32), "emap"))  # last initializer
    graph = helper.make_graph(nodes, "tiny_swap", [image, embed], [output], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _roundtrip_error(out, attribute) -> float:
    face = cv2.erode((out.mask > 0.5).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    assert face.sum() > 5000
    return float(np.abs(out.image[face].astype(int) - attribute.image[face].astype(int)).mean())


def test_inswapper_adapter_convention(tmp_path, records):
    from pocketswap.teacher.onnx_teachers import OnnxTeacher, normalize

    emap = np.random.default_rng(1).normal(size=(512, 512)).astype(np.float32)
    path = _swap_graph(tmp_path / "inswapper.onnx", "target", "source", 128, emap=emap)
    encoder = FakeArcFace()
    teacher = load_teacher(path, SIZE, identity_encoder=encoder)
    assert isinstance(teacher, OnnxTeacher) and teacher.style == "inswapper" and teacher.model_size == 128
    identity, attribute = records["grace_hopper"], records["astronaut"]
    feed, _ = teacher.prepare_inputs([identity], [attribute])
    e = encoder.embed_chips(encoder.chips[-1])
    expected = normalize(normalize(e) @ emap)
    np.testing.assert_allclose(feed["source"], expected, rtol=1e-4, atol=1e-6)
    assert np.abs(np.linalg.norm(feed["source"], axis=1) - 1.0).max() < 1e-5
    target = feed["target"]
    assert target.shape == (1, 3, 128, 128) and target.min() >= 0.0 and target.max() <= 1.0
    # The identity graph returns its input: the swap must land back on the attribute's face.
    assert _roundtrip_error(teacher.swap(identity, attribute), attribute) < 8.0


def test_simswap_and_ghost_adapter_conventions(tmp_path, records):
    from pocketswap.teacher.onnx_teachers import normalize

    identity, attribute = records["grace_hopper"], records["astronaut"]
    simswap = load_teacher(
        _swap_graph(tmp_path / "s.onnx", "img", "latent", 224, op="imagenet_to_unit"),
        SIZE,
        identity_encoder=FakeArcFace(),
    )
    assert simswap.style == "simswap"
    feed, _ = simswap.prepare_inputs([identity], [attribute])
    assert abs(float(feed["img"].mean())) < 1.5 and feed["img"].min() < -0.5  # ImageNet-normalised
    np.testing.assert_allclose(np.linalg.norm(feed["latent"], axis=1), 1.0, rtol=1e-5)
    assert _roundtrip_error(simswap.swap(identity, attribute), attribute) < 8.0

    ghost = load_teacher(
        "ghost:" + str(_swap_graph(tmp_path / "g.onnx", "target", "source_embed", 256, batch=0)),
        SIZE,
        identity_encoder=FakeArcFace(),
    )
    assert ghost.style == "ghost" and ghost.batched
    feed, _ = ghost.prepare_inputs([identity], [attribute])
    assert feed["target"].min() < -0.5 and feed["target"].max() <= 1.0  # [-1, 1]
    np.testing.assert_allclose(feed["source_embed"], normalize(feed["source_embed"]), rtol=1e-5)
    outs = ghost.swap_batch([identity, attribute], [attribute, identity])
    assert _roundtrip_error(outs[0], attribute) < 8.0 and _roundtrip_error(outs[1], identity) < 8.0


def test_onnx_signature_errors(tmp_path):
    from pocketswap.teacher.onnx_teachers import OnnxTeacher

    encoder = FakeArcFace()
    emap = np.eye(512, dtype=np.float32)
    bad_dim = _swap_graph(tmp_path / "bad_dim.onnx", "target", "source", 128, embed_dim=256, emap=emap)
    with pytest.raises(
        ModelSignatureError, match=r"(?s)not a inswapper-style.*512.*Expected.*Found.*source: \[1, 256\]"
    ):
        OnnxTeacher(bad_dim, "inswapper", identity_encoder=encoder)
    no_emap = _swap_graph(tmp_path / "no_emap.onnx", "target", "source", 128)
    with pytest.raises(ModelSignatureError, match="emap"):
        OnnxTeacher(no_emap, "inswapper", identity_encoder=encoder)
    with pytest.raises(ModelSignatureError, match="not a known face-swap model"):
        load_teacher(bad_dim, identity_encoder=encoder)
    ambiguous = _swap_graph(tmp_path / "amb.onnx", "x", "y", 256)
    with pytest.raises(ModelSignatureError, match="several styles"):
        load_teacher(ambiguous, identity_encoder=encoder)
    with pytest.raises(ModelSignatureError, match="not a ghost-style"):
        load_teacher("ghost:" + str(_swap_graph(tmp_path / "s224.onnx", "x", "y", 224)), identity_encoder=encoder)
    with pytest.raises(ConfigError, match="ArcFace"):
        load_teacher(ambiguous, style="ghost")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ModelSignatureError, match="not a readable ONNX model"):
        load_teacher(garbage, identity_encoder=encoder)
    teacher = load_teacher("ghost:" + str(ambiguous), identity_encoder=FakeArcFace(dim=128))
    record = AlignedRecord(
        np.zeros((224, 224, 3), np.uint8), np.random.default_rng(0).uniform(60, 160, (468, 3)).astype(np.float32)
    )
    with pytest.raises(ModelSignatureError, match="128-d"):
        teacher.swap(record, record)


# -- augmentations -------------------------------------------------------------------------------
def test_augmentations_are_deterministic_and_consistent(records):
    record = records["astronaut"]
    cfg = aug.AugmentConfig()
    for fn, sub in ((aug.pose_jitter, cfg.pose), (aug.expression_warp, cfg.expression)):
        a = fn(record, np.random.default_rng(5), sub)
        b = fn(record, np.random.default_rng(5), sub)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.landmarks, b.landmarks)
        assert not np.array_equal(a.image, record.image)
    jaw = aug.expression_displacement(record.landmarks, 0.3, 0.0, 0.0)
    iod = aug.inter_ocular(record.landmarks)
    assert (
        jaw[152, 1] > 0.25 * iod and abs(jaw[13, 1]) < 0.05 * iod and abs(jaw[10, 1]) < 1e-3
    )  # chin drops, forehead stays
    a = aug.color_jitter(record.image, np.random.default_rng(3), cfg.color)
    assert np.array_equal(a, aug.color_jitter(record.image, np.random.default_rng(3), cfg.color))
    flipped = aug.flip_record(aug.flip_record(record))
    assert np.array_equal(flipped.image, record.image)
    np.testing.assert_allclose(flipped.landmarks, record.landmarks, atol=1e-4)


def test_occluders_and_morphs(records):
    record = records["astronaut"]
    cfg = aug.OccluderConfig(max_cover=0.3)
    hull = aug.face_mask(record.landmarks, SIZE, 0.0) > 0.5
    for seed in range(12):
        occ = occluders.make_occluder(
            np.random.default_rng(seed), record.landmarks, SIZE, cfg, [record.image], [occluders.skin_tone(record)]
        )
        assert occ.kind in aug.OCCLUDER_KINDS
        assert occ.alpha.max() > 0.9
        assert (occ.alpha[hull] > 0.5).sum() / hull.sum() <= 0.35
    morph = aug.morph_records(records["astronaut"], records["grace_hopper"], 0.5)
    np.testing.assert_allclose(
        morph.landmarks, (records["astronaut"].landmarks + records["grace_hopper"].landmarks) / 2, atol=1e-4
    )
    assert morph.image.shape == (SIZE, SIZE, 3)
    with pytest.raises(ConfigError, match="'flip.attribute'"):
        aug.AugmentConfig.from_dict({"flip": {"attribute": 2.0}})
    with pytest.raises(ConfigError, match="'occluder.kinds'"):
        aug.AugmentConfig.from_dict({"occluder": {"kinds": ["piano"]}})


@pytest.mark.slow
def test_teacher_bench_reports_swaps_and_pairs_per_second(tmp_path):
    from pocketswap.teacher.bench import bench_generation

    result = bench_generation("samples", pairs=8, workers=0, size=96, cache=str(tmp_path / "cache"))
    assert result.teacher == "geometric" and result.pairs == 8
    assert result.swaps_per_second > 0 and result.pairs_per_second > 0
    assert (tmp_path / "cache").is_dir() and any((tmp_path / "cache").iterdir())  # the analysis cache is kept


def _chin_patch(attribute) -> np.ndarray:
    """bool mask of the skin between the lower lip and the chin (where a painted beard goes)."""
    from pocketswap.teacher.mesh import CHIN

    core, _ = GeometricTeacher(SIZE)._region(attribute.landmarks[:, :2])
    rows = np.arange(SIZE)[:, None]
    lip = attribute.landmarks[list(OUTER_LIP), 1].max()
    return (core > 0) & (rows > lip + 4) & (rows < attribute.landmarks[CHIN, 1] - 4) & np.ones((1, SIZE), bool)


def test_facial_hair_is_found_on_a_painted_beard_and_stays_the_frames(records):
    """A dark, textured beard painted on the attribute's chin is found as facial hair (clean skin is not), and the
    swap keeps it (the frame's, like head hair) unless facial_hair is none."""
    from pocketswap.teacher.base import AlignedRecord
    from pocketswap.teacher.skin import facial_hair_mask

    identity, attribute = records["grace_hopper"], records["astronaut"]
    core, _ = GeometricTeacher(SIZE)._region(attribute.landmarks[:, :2])
    chin = _chin_patch(attribute)
    assert chin.sum() > 200
    clean = facial_hair_mask(attribute.image, attribute.landmarks, core)
    assert clean[chin].mean() < 0.1
    beard = attribute.image.copy()
    noise = np.random.default_rng(0).integers(0, 50, size=(int(chin.sum()), 1))
    beard[chin] = (35 + noise).astype(np.uint8)  # dark grey stubble, textured
    bearded = AlignedRecord(beard, attribute.landmarks)
    found = facial_hair_mask(beard, attribute.landmarks, core)
    assert found[chin].mean() > 0.8
    cheeks = (core > 0) & (np.arange(SIZE)[:, None] < attribute.landmarks[1, 1])  # above the nose tip: skin
    assert found[cheeks].mean() < 0.05

    def beard_change(**config) -> float:
        out = GeometricTeacher(SIZE, GeometricConfig(shape_transfer=0.0, **config)).swap(identity, bearded).image
        inner = cv2.erode(chin.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        return float(np.abs(out[inner].astype(int) - beard[inner].astype(int)).mean())

    assert beard_change() < 3.0
    assert beard_change(facial_hair="none") > 15.0


def test_lips_keep_the_frames_colour_or_whole(records):
    """lips="frame" keeps the attribute's lips whole (no lipstick or identity teeth carried across); "colour" (the
    default) their a*/b* only; "identity" takes them from the identity photo."""
    identity, attribute = records["grace_hopper"], records["astronaut"]
    lips = _polygon(attribute.landmarks, [OUTER_LIP])
    assert lips.sum() > 50

    def lip_change(**config) -> float:
        config = {"shape_transfer": 0.0, "frame_folds": False, **config}
        out = GeometricTeacher(SIZE, GeometricConfig(**config)).swap(identity, attribute).image
        return float(np.abs(out[lips].astype(int) - attribute.image[lips].astype(int)).mean())

    assert lip_change(lips="frame") < 2.0
    assert lip_change(lips="identity") > 6.0

    def lip_chroma_change(**config) -> float:
        out = GeometricTeacher(SIZE, GeometricConfig(shape_transfer=0.0, frame_folds=False, **config))
        chroma = lambda image: cv2.cvtColor(image, cv2.COLOR_RGB2LAB)[lips][:, 1:].astype(int)  # noqa: E731
        return float(np.abs(chroma(out.swap(identity, attribute).image) - chroma(attribute.image)).mean())

    assert lip_chroma_change() < 0.5 * lip_chroma_change(lips="identity")
    with pytest.raises(ConfigError, match="'lips'"):
        GeometricConfig(lips="lipstick")


def test_folds_below_the_nose_are_the_frames(records):
    """The fine luminance detail of the lower face (smile folds, chin) follows the attribute photo, not the
    identity photo, with frame_folds on (off by default)."""
    identity, attribute = records["grace_hopper"], records["astronaut"]
    chin = cv2.erode(_chin_patch(attribute).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    detail = lambda image: (lambda g: g - cv2.GaussianBlur(g, (0, 0), SIZE * 0.025))(  # noqa: E731
        cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    )[chin]
    frame = detail(attribute.image)

    def likeness(**config) -> float:
        config = {"shape_transfer": 0.0, "facial_hair": "none", "lips": "frame", **config}
        out = GeometricTeacher(SIZE, GeometricConfig(**config)).swap(identity, attribute).image
        return float(np.corrcoef(detail(out), frame)[0, 1])

    assert likeness(frame_folds=True) > 0.5 > 0.2 > likeness(frame_folds=False)  # 0.64 and 0.02 measured


def test_skin_grain_and_eye_shadow_colour_are_the_frames(records):
    """The skin's finest luminance detail (pores, grain, noise) follows the attribute photo with frame_grain on
    (the default), and the colour around the eyes (lids, brows) is the attribute's with lid_colour on."""
    from pocketswap.teacher.skin import feature_mask, lid_region

    identity, attribute = records["grace_hopper"], records["astronaut"]
    core, _ = GeometricTeacher(SIZE)._region(attribute.landmarks[:, :2])
    skin = cv2.erode(((core > 0) & (feature_mask(SIZE, attribute.landmarks) == 0)).astype(np.uint8), np.ones((9, 9)))
    skin = skin > 0
    fine = lambda image: (lambda g: g - cv2.GaussianBlur(g, (0, 0), SIZE * 0.006))(  # noqa: E731
        cv2.cvtColor(image, cv2.COLOR_RGB2LAB)[..., 0].astype(np.float32)
    )[skin]

    def swap(**config) -> np.ndarray:
        config = {"shape_transfer": 0.0, "facial_hair": "none", **config}
        return GeometricTeacher(SIZE, GeometricConfig(**config)).swap(identity, attribute).image

    grain = lambda image: float(np.corrcoef(fine(image), fine(attribute.image))[0, 1])  # noqa: E731
    assert grain(swap()) > 0.45 > 0.2 > grain(swap(frame_grain=False))  # 0.55 and 0.12 measured
    lids = lid_region(SIZE, attribute.landmarks) > 0.9
    assert lids.sum() > 200
    chroma = lambda image: cv2.cvtColor(image, cv2.COLOR_RGB2LAB)[lids][:, 1:].astype(float)  # noqa: E731
    change = lambda image: float(np.abs(chroma(image) - chroma(attribute.image)).mean())  # noqa: E731
    assert change(swap()) < 0.5 * change(swap(lid_colour=False))


def test_cycle_pairs_put_the_teachers_swap_in_the_frame_and_the_real_photo_in_the_target(records):
    """cycle_share=1: every pair's target is a real photo, its identity that photo's person, and its frame the
    teacher's swap of another face into the photo (ReliableSwap's cycle triplets)."""
    from pocketswap.teacher.config import GenerateConfig
    from pocketswap.teacher.pairs import PairMaker

    cfg = GenerateConfig(size=SIZE, cycle_share=1.0, same_identity_share=0.0, seed=3)
    cfg = cfg.replace(augment=cfg.augment.replace(enabled=False))
    pool = [records[name] for name in NAMES]
    maker = PairMaker(cfg, pool, GeometricTeacher(SIZE))
    for index in range(4):
        sample, stats = maker.make(index)
        photo = records[sample.meta["attribute"]]
        assert sample.meta["pair"] == stats["pair"] == "cycle" and sample.meta["identity"] == photo.name
        assert np.array_equal(sample.output, photo.image) and np.array_equal(sample.identity, photo.image)
        assert np.array_equal(sample.id_embedding, photo.embedding)
        inside = sample.mask > 0.9
        assert np.abs(sample.attribute.astype(int) - photo.image.astype(int))[inside].mean() > 5  # a swapped frame
        assert photo.name in sample.meta["identity_sources"] and len(sample.meta["identity_sources"]) == 2
    with pytest.raises(ConfigError, match="cycle_share"):
        GenerateConfig(cycle_share=1.5)
