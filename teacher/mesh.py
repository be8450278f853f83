"""FaceMesh (468-point) topology the teacher stage needs: feature index sets and the mirror map.

Indices are the subject's: "right" features appear on the image's left in an unmirrored photo.
"""

from __future__ import annotations

import numpy as np

from pocketswap.faces.types import LEFT_EYE_RING, NUM_LANDMARKS, RIGHT_EYE_RING

# Inner lip contour, in order around the mouth opening (upper and lower inner lips).
UPPER_INNER_LIP_CENTRE = 13
LOWER_INNER_LIP_CENTRE = 14
CHIN = 152
RIGHT_EYEBROW = (70, 63, 105, 66, 107, 55, 65, 52, 53, 46)
LEFT_EYEBROW = (300, 293, 334, 296, 336, 285, 295, 282, 283, 276)
EYE_RINGS = (RIGHT_EYE_RING, LEFT_EYE_RING)
# Points on the face's symmetry plane (mapped to themselves by a horizontal flip).
MIDLINE = (
    0,
    1,
    2,
    4,
    5,
    6,
    8,
    9,
    10,
    11,
    12,
    13,
    14,
    15,
    16,
    17,
    18,
    19,
    94,
    151,
    152,
    164,
    168,
    175,
    195,
    197,
    199,
    200,
)

# Mirror partners (i, j): after a horizontal flip, point i of the flipped face is point j of the
# original. Derived once from the mean FaceMesh geometry of the bundled sample faces aligned to
# the ArcFace template: each point was matched to its nearest mirrored point (optimal one-to-one
# assignment about the midline); the result is an involution whose fixed points are exactly
# MIDLINE (see tests/test_teacher.py, which re-derives it).
# fmt: off
FLIP_PAIRS = (
    (3, 248), (7, 249), (20, 250), (21, 251), (22, 252), (23, 253), (24, 254), (25, 255), (26, 256), (27, 257),
    (28, 258), (29, 259), (30, 260), (31, 261), (32, 262), (33, 263), (34, 264), (35, 265), (36, 266), (37, 267),
    (38, 268), (39, 269), (40, 270), (41, 271), (42, 272), (43, 273), (44, 274), (45, 275), (46, 276), (47, 277),
    (48, 278), (49, 279), (50, 280), (51, 281), (52, 282), (53, 283), (54, 284), (55, 285), (56, 286), (57, 287),
    (58, 288), (59, 289), (60, 290), (61, 291), (62, 292), (63, 293), (64, 294), (65, 295), (66, 296), (67, 297),
    (68, 298), (69, 299), (70, 300), (71, 301), (72, 302), (73, 303), (74, 304), (75, 305), (76, 306), (77, 307),
    (78, 308), (79, 309), (80, 310), (81, 311), (82, 312), (83, 313), (84, 314), (85, 315), (86, 316), (87, 317),
    (88, 318), (89, 319), (90, 320), (91, 321), (92, 322), (93, 323), (95, 324), (96, 325), (97, 326), (98, 327),
    (99, 328), (100, 329), (101, 330), (102, 331), (103, 332), (104, 333), (105, 334), (106, 335), (107, 336),
    (108, 337), (109, 338), (110, 339), (111, 340), (112, 341), (113, 342), (114, 343), (115, 344), (116, 345),
    (117, 346), (118, 347), (119, 348), (120, 349), (121, 350), (122, 351), (123, 352), (124, 353), (125, 354),
    (126, 355), (127, 356), (128, 357), (129, 358), (130, 359), (131, 360), (132, 361), (133, 362), (134, 363),
    (135, 364), (136, 365), (137, 366), (138, 367), (139, 368), (140, 369), (141, 370), (142, 371), (143, 372),
    (144, 373), (145, 374), (146, 375), (147, 376), (148, 377), (149, 378), (150, 379), (153, 380), (154, 381),
    (155, 382), (156, 383), (157, 384), (158, 385), (159, 386), (160, 387), (161, 388), (162, 389), (163, 390),
    (165, 391), (166, 392), (167, 393), (169, 394), (170, 395), (171, 396), (172, 397), (173, 398), (174, 399),
    (176, 400), (177, 401), (178, 402), (179, 403), (180, 404), (181, 405), (182, 406), (183, 407), (184, 408),
    (185, 409), (186, 410), (187, 411), (188, 412), (189, 413), (190, 414), (191, 415), (192, 416), (193, 417),
    (194, 418), (196, 419), (198, 420), (201, 421), (202, 422), (203, 423), (204, 424), (205, 425), (206, 426),
    (207, 427), (208, 428), (209, 429), (210, 430), (211, 431), (212, 432), (213, 433), (214, 434), (215, 435),
    (216, 436), (217, 437), (218, 438), (219, 439), (220, 440), (221, 441), (222, 442), (223, 443), (224, 444),
    (225, 445), (226, 446), (227, 447), (228, 448), (229, 449), (230, 450), (231, 451), (232, 452), (233, 453),
    (234, 454), (235, 455), (236, 456), (237, 457), (238, 458), (239, 459), (240, 460), (241, 461), (242, 462),
    (243, 463), (244, 464), (245, 465), (246, 466), (247, 467),
)
# fmt: on


def _flip_map() -> np.ndarray:
    mapping = np.arange(NUM_LANDMARKS)
    for i, j in FLIP_PAIRS:
        mapping[i], mapping[j] = j, i
    return mapping


# FLIP_MAP[i] is the index whose mirrored position becomes point i after a horizontal flip.
FLIP_MAP: np.ndarray = _flip_map()
FLIP_MAP.setflags(write=False)


def flip_landmarks(landmarks: np.ndarray, width: int) -> np.ndarray:
    """Landmarks of the horizontally flipped image (x -> width - 1 - x, indices mirrored)."""
    out = np.array(landmarks, dtype=np.float32, copy=True)
    out[:, 0] = (width - 1) - out[:, 0]
    return out[FLIP_MAP]


def derive_flip_map(landmarks: np.ndarray) -> np.ndarray:
    """Mirror map from a frontal (e.g. averaged) 468-point geometry: mirror about the midline's mean x
    and assign each point its nearest mirrored point one-to-one. Used to check FLIP_PAIRS."""
    from scipy.optimize import linear_sum_assignment

    xy = np.asarray(landmarks, dtype=np.float64)[:, :2]
    centre_x = xy[list(MIDLINE), 0].mean()
    mirrored = xy.copy()
    mirrored[:, 0] = 2.0 * centre_x - mirrored[:, 0]
    cost = np.linalg.norm(xy[:, None, :] - mirrored[None, :, :], axis=2)
    _, columns = linear_sum_assignment(cost)
    return columns
