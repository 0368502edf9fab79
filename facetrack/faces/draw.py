"""Contact sheet of a face tracking result: the model frames with every trajectory, and the main crops.

The sheet has a title line, the T model frames in a grid with each trajectory's box and id (the main
character's box thick and green, labelled ``main``), and a row with the main character's crops.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from facetrack.faces.select import boxes_within
from facetrack.types import FaceTrackResult

MAIN_COLOUR = (40, 220, 70)
_PALETTE = [
    (230, 80, 60),
    (70, 140, 240),
    (240, 190, 40),
    (200, 90, 220),
    (60, 210, 210),
    (250, 140, 30),
    (150, 150, 255),
    (255, 110, 170),
]


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        return ImageFont.load_default()


def contact_sheet(result: FaceTrackResult, thumb_width: int = 240, columns: int = 8) -> Any | None:
    """Render ``result`` as a PIL image; ``None`` when it has no model frames (the video failed)."""
    from PIL import Image, ImageDraw

    frames = result.model_frames
    if frames is None or len(frames) == 0:
        return None
    images = frames.images
    t, h, w = images.shape[0], images.shape[1], images.shape[2]
    scale = thumb_width / w
    th = max(1, int(round(h * scale)))
    columns = max(1, min(columns, t))
    rows = (t + columns - 1) // columns
    pad = 4
    grid_w = columns * (thumb_width + pad) + pad
    crop_side = max(16, (grid_w - pad) // t - pad)
    title_h = 28
    crops_h = crop_side + 2 * pad + 18 if result.crops is not None else 24
    sheet = Image.new("RGB", (grid_w, title_h + rows * (th + pad) + pad + crops_h), (24, 24, 28))
    draw = ImageDraw.Draw(sheet)
    font, small = _font(14), _font(11)

    main = result.main_track
    title = f"{result.video.id}   tracks: {len(result.tracks)}   main: "
    title += f"id {main.track_id} ({len(main.frames)} frames)" if main is not None else "none"
    total = result.timings.get("total")
    if total is not None:
        title += f"   {total:.2f}s"
    draw.text((pad + 2, 6), title, fill=(235, 235, 235), font=font)

    slack = 1.0 / result.tracking_fps if result.tracking_fps > 0 else 0.0
    times = list(frames.timestamps)
    others = {
        track.track_id: boxes_within(track, result.tracking_times, times, slack)
        for track in result.tracks
        if track.track_id != result.main_track_id and result.tracking_times
    }
    for i in range(t):
        x0 = pad + (i % columns) * (thumb_width + pad)
        y0 = title_h + (i // columns) * (th + pad)
        thumb = Image.fromarray(images[i]).resize((thumb_width, th), Image.BILINEAR)
        sheet.paste(thumb, (x0, y0))
        for track_id, boxes in sorted(others.items()):
            if boxes[i] is not None:
                colour = _PALETTE[track_id % len(_PALETTE)]
                _box(draw, boxes[i], scale, x0, y0, colour, 2, f"id {track_id}", small)
        if main is not None and i < len(result.main_boxes) and result.main_boxes[i] is not None:
            _box(draw, result.main_boxes[i], scale, x0, y0, MAIN_COLOUR, 3, f"main {main.track_id}", small)
        draw.text((x0 + 3, y0 + th - 14), f"{times[i]:.2f}s", fill=(255, 255, 255), font=small)

    y = title_h + rows * (th + pad) + pad
    if result.crops is not None:
        draw.text((pad + 2, y), "main character crops", fill=MAIN_COLOUR, font=small)
        for i, crop in enumerate(result.crops):
            tile = Image.fromarray(np.asarray(crop)).resize((crop_side, crop_side), Image.BILINEAR)
            sheet.paste(tile, (pad + i * (crop_side + pad), y + 16))
    else:
        draw.text((pad + 2, y + 4), "no main character", fill=(200, 200, 200), font=small)
    return sheet


def _box(draw: Any, box, scale: float, x0: int, y0: int, colour, width: int, label: str, font: Any) -> None:
    x1, y1, x2, y2 = (float(v) * scale for v in box[:4])
    draw.rectangle([x0 + x1, y0 + y1, x0 + x2, y0 + y2], outline=colour, width=width)
    draw.text((x0 + x1 + 2, y0 + max(0.0, y1 - 13)), label, fill=colour, font=font)


def contact_sheet_png(result: FaceTrackResult, thumb_width: int = 240, columns: int = 8) -> bytes | None:
    """The contact sheet as PNG bytes, or ``None`` when the result has no model frames."""
    image = contact_sheet(result, thumb_width=thumb_width, columns=columns)
    if image is None:
        return None
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
