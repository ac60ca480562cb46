"""Face Mesh landmark indices the engine relies on (MediaPipe's 468-point topology)."""

import numpy as np

N_LANDMARKS = 468
UPPER_INNER_LIP = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LOWER_INNER_LIP = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
MOUTH_LEFT, MOUTH_RIGHT = 61, 291
UPPER_LIP_INNER_MID, LOWER_LIP_INNER_MID = 13, 14
CHIN = 152
NOSE_TIP = 1
FOREHEAD = 10
# Face oval, clockwise from the forehead.
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378,
             400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54,
             103, 67, 109)


def mouth_opening(points: np.ndarray) -> float:
    """Inner-lip gap divided by mouth width: 0 for shut lips, ~0.5 for a wide-open mouth."""
    gap = float(np.linalg.norm(points[LOWER_LIP_INNER_MID] - points[UPPER_LIP_INNER_MID]))
    width = float(np.linalg.norm(points[MOUTH_RIGHT] - points[MOUTH_LEFT]))
    return gap / max(width, 1e-6)
