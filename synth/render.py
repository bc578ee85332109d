"""Drawing one synthetic dive, frame by frame, from a side-on broadcast-style camera.

The world is in metres: the water surface is ``y = 0``, the 10 m platform's edge is ``x = 0``
and divers fly towards ``+x``. The diver is an articulated body (torso, head, arms, legs with
thickness) posed in 3-D body coordinates, twisted about its long axis, somersaulted about its
lateral axis and projected orthographically onto the image plane, so twists show up as limbs
sweeping across the body and somersaults as the body turning over. The camera tilts to follow
the diver down and stops where the pool and the splash fill the lower part of the frame.

Everything that judges penalise is drawn large enough for a frozen Kinetics I3D at low
resolution to pick up: a loose body (open tuck, bent knees, split legs, wobble), a tilted entry,
and above all a splash whose size, height and duration grow with the execution error.
Frames are drawn at ``supersample`` times the output size and box-filtered down (anti-aliasing).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from synth.dives import DiveFactors

GRAVITY = 9.81
PLATFORM_HEIGHT = 10.0
STANDING_HIP_HEIGHT = 1.0  # metres above the platform; the pelvis is the body's origin
SECONDS_PER_DIVE = 3.6  # the clip always spans this much time: approach, flight, entry, splash
APPROACH_SECONDS = 0.6  # on the platform before take-off
VIEW_HEIGHT = 6.0  # metres of the world that fill the frame height at zoom 1
VIEW_BOTTOM_AT_ENTRY = -1.2  # when the camera is lowest, this much pool shows below the surface

# Body dimensions (metres), pelvis at the origin, y up the spine, x out of the chest, z lateral.
NECK = 0.52
HEAD_CENTRE = 0.68
HEAD_RADIUS = 0.12
SHOULDER_HEIGHT = 0.48
SHOULDER_HALF_WIDTH = 0.2
HIP_HALF_WIDTH = 0.1
THIGH = 0.45
SHIN = 0.47
UPPER_ARM = 0.3
FOREARM = 0.3
TORSO_WIDTH = 0.30
LIMB_WIDTH = 0.13

SUIT_COLOURS = ((180, 30, 40), (20, 40, 120), (25, 25, 30), (20, 110, 60), (110, 40, 130), (220, 120, 20))
SKIN_COLOURS = ((240, 200, 170), (215, 165, 125), (170, 120, 85), (110, 75, 50))


@dataclass(frozen=True)
class Scene:
    """What stays fixed over one broadcast (all dives of one video): venue colours and camera."""

    wall_colour: tuple[int, int, int]
    banner_colour: tuple[int, int, int]
    water_colour: tuple[int, int, int]
    zoom: float
    camera_x: float  # world x at the centre of the frame
    light: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel gain of the whole picture (exposure, tint)


def sample_scene(rng: np.random.Generator, variety: float = 0.0) -> Scene:
    """A broadcast's venue and camera. ``variety`` 0 gives near-identical venues (zoom within
    8 %, one exposure); 1 gives zooms from about 0.7 to 1.4, framing shifted by up to a metre and a
    half, exposure from 0.6 to 1.2 with a colour cast, so the same splash covers very different
    pixel areas and brightness from one broadcast to the next."""
    wall = rng.integers(120, 220, size=3)
    banner = rng.integers(40, 250, size=3)
    water = (int(rng.integers(20, 60)), int(rng.integers(90, 140)), int(rng.integers(160, 210)))
    zoom_spread = math.log(1.08) + variety * math.log(1.33)
    exposure = 1.0 + variety * rng.uniform(-0.4, 0.2)
    cast = 1.0 + variety * rng.uniform(-0.12, 0.12, size=3)
    return Scene(
        wall_colour=tuple(int(c) for c in wall),
        banner_colour=tuple(int(c) for c in banner),
        water_colour=water,
        zoom=float(math.exp(rng.uniform(-zoom_spread, zoom_spread))),
        camera_x=float(0.9 + rng.uniform(-1.0, 1.0) * (0.2 + 0.6 * variety)),
        light=tuple(float(exposure * c) for c in cast),
    )


@dataclass(frozen=True)
class Look:
    """What varies by diver and does not affect scores: suit and skin colour, small timing jitter."""

    suit_colour: tuple[int, int, int]
    skin_colour: tuple[int, int, int]
    wobble_phase: float
    # The shot of this one dive within its broadcast (the operator's framing and timing):
    zoom_factor: float = 1.0  # times the broadcast's zoom
    pan_offset: float = 0.0  # metres added to the broadcast's camera_x
    time_offset: float = 0.0  # seconds: the clip starts this much later into the dive (negative: earlier)


def sample_look(rng: np.random.Generator, variety: float = 0.0) -> Look:
    """A diver's look and the shot of their dive. ``variety`` 0: every dive of a broadcast framed
    and timed alike; 1: zoom within about 20 %, framing within 0.4 m and the clip's start within
    0.35 s vary from dive to dive."""
    suit = SUIT_COLOURS[int(rng.integers(len(SUIT_COLOURS)))]
    skin = SKIN_COLOURS[int(rng.integers(len(SKIN_COLOURS)))]
    wobble = float(rng.uniform(0, 2 * math.pi))
    zoom, pan, delay = rng.uniform(-1.0, 1.0, size=3)
    return Look(
        suit_colour=suit,
        skin_colour=skin,
        wobble_phase=wobble,
        zoom_factor=float(math.exp(variety * math.log(1.2) * zoom)),
        pan_offset=float(variety * 0.4 * pan),
        time_offset=float(variety * 0.35 * delay),
    )


def shot_scene(scene: Scene, look: Look) -> Scene:
    """The broadcast's scene as this dive's shot frames it."""
    if look.zoom_factor == 1.0 and look.pan_offset == 0.0:
        return scene
    return dataclasses.replace(scene, zoom=scene.zoom * look.zoom_factor, camera_x=scene.camera_x + look.pan_offset)


# --------------------------------------------------------------------------- motion


def _smoothstep(u: float, start: float, end: float) -> float:
    x = min(max((u - start) / (end - start), 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


@dataclass(frozen=True)
class Flight:
    """The dive's trajectory: take-off velocity and the time the hands reach the water."""

    start_x: float
    start_y: float
    velocity_x: float
    velocity_y: float
    duration: float  # seconds from take-off to entry

    def position(self, seconds: float) -> tuple[float, float]:
        seconds = min(seconds, self.duration)
        return (
            self.start_x + self.velocity_x * seconds,
            self.start_y + self.velocity_y * seconds - 0.5 * GRAVITY * seconds * seconds,
        )


def plan_flight(factors: DiveFactors) -> Flight:
    start_x = 0.15 if factors.dive.armstand else 0.25
    start_y = PLATFORM_HEIGHT + STANDING_HIP_HEIGHT
    velocity_y = math.sqrt(2.0 * GRAVITY * factors.takeoff_height)
    velocity_x = 0.9
    # Entry: the pelvis is 1.15 m above the water when the hands (over the head) touch it.
    drop = start_y - 1.15
    duration = (velocity_y + math.sqrt(velocity_y**2 + 2.0 * GRAVITY * drop)) / GRAVITY
    return Flight(start_x, start_y, velocity_x, velocity_y, duration)


@dataclass
class Pose:
    """Joint angles in degrees (sagittal plane) and lateral spreads in metres."""

    hip: float = 0.0  # hip flexion: thighs swing towards the chest
    knee: float = 0.0  # knee flexion (the first leg; the second adds ``scissor``)
    scissor: float = 0.0
    shoulder: float = 0.0  # arm elevation: 0 down the sides, 180 straight over the head
    elbow: float = 0.0
    arm_spread: float = 0.0
    leg_spread: float = 0.0


def _blend(a: Pose, b: Pose, weight: float) -> Pose:
    return Pose(*[(1 - weight) * getattr(a, name) + weight * getattr(b, name) for name in Pose.__dataclass_fields__])


def _tucked_pose(position: str, line_error: float) -> Pose:
    """The flight position, loosened by the body-line error."""
    if position == "tuck":
        return Pose(hip=135 - 50 * line_error, knee=145 - 60 * line_error, scissor=30 * line_error,
                    shoulder=70, elbow=60 + 30 * line_error, arm_spread=0.25 * line_error,
                    leg_spread=0.35 * line_error)
    if position == "pike":
        return Pose(hip=150 - 45 * line_error, knee=55 * line_error, scissor=25 * line_error,
                    shoulder=150 - 40 * line_error, elbow=10 + 40 * line_error,
                    arm_spread=0.3 * line_error, leg_spread=0.35 * line_error)
    # free: straight body, arms folded over the chest (twisting position)
    return Pose(hip=35 * line_error, knee=40 * line_error, scissor=30 * line_error, shoulder=25,
                elbow=130, arm_spread=0.35 * line_error, leg_spread=0.35 * line_error)


def _pose_keyframes(dive, line_error: float) -> "_Keyframes":
    """The body's shape through the flight: into the position, (twist,) come out, line up."""
    takeoff = Pose(shoulder=180.0)
    position = _tucked_pose(dive.position, line_error)
    entry = _entry_pose(line_error)
    if dive.half_twists:
        twisting = _tucked_pose("free", line_error)
        return _Keyframes([(0.0, takeoff), (0.12, position), (0.4, position), (0.5, twisting), (0.8, twisting),
                           (0.9, entry)])
    return _Keyframes([(0.0, takeoff), (0.15, position), (0.72, position), (0.85, entry)])


class _Keyframes:
    def __init__(self, keys: list[tuple[float, Pose]]):
        self.keys = keys

    def at(self, u: float) -> Pose:
        """The pose at flight fraction ``u`` (a fresh copy: callers add wobble to it)."""
        if u <= self.keys[0][0]:
            return dataclasses.replace(self.keys[0][1])
        for (start, first), (end, second) in zip(self.keys, self.keys[1:]):
            if u < end:
                return _blend(first, second, _smoothstep(u, start, end))
        return dataclasses.replace(self.keys[-1][1])


def _entry_pose(line_error: float) -> Pose:
    """Straight, arms locked over the head; a poor line pikes, bends and splits."""
    return Pose(hip=40 * line_error, knee=45 * line_error, scissor=35 * line_error,
                shoulder=180 - 70 * line_error, elbow=60 * line_error, arm_spread=0.4 * line_error,
                leg_spread=0.4 * line_error)


@dataclass
class BodyState:
    """Where the diver is and how they are shaped at one instant."""

    pelvis: tuple[float, float]
    somersault: float  # degrees clockwise from upright, in the image plane
    twist: float  # degrees about the body's long axis
    facing: float  # +1 chest towards the water side (+x) when upright, -1 towards the platform
    pose: Pose
    visible: bool = True


def body_state(factors: DiveFactors, flight: Flight, look: Look, seconds: float, jitter: np.ndarray) -> BodyState:
    """The diver at ``seconds`` since the start of the clip (take-off at ``APPROACH_SECONDS``)."""
    dive = factors.dive
    facing = 1.0 if dive.group in ("forward", "reverse") else -1.0
    if dive.armstand:
        facing = -facing  # in a handstand the chest faces the other way
    spin = 1.0 if dive.group in ("forward", "back") else -1.0  # clockwise: head goes towards +x
    start_angle = 180.0 if dive.armstand else 0.0
    line = factors.line_error

    if seconds < APPROACH_SECONDS:  # on the platform: arms swing up, knees dip, then the jump
        u = seconds / APPROACH_SECONDS
        dip = math.sin(math.pi * _smoothstep(u, 0.3, 1.0)) * 0.15
        if dive.armstand:
            pose = Pose(shoulder=180.0, hip=10 * math.sin(math.pi * u))
            pelvis = (flight.start_x, flight.start_y - 0.05 * dip)
        else:
            pose = Pose(shoulder=180.0 * _smoothstep(u, 0.0, 0.7), knee=60 * dip / 0.15 * 0.5, hip=20 * dip / 0.15 * 0.5)
            pelvis = (flight.start_x, flight.start_y - dip)
        return BodyState(pelvis, start_angle, 0.0, facing, pose)

    airborne = seconds - APPROACH_SECONDS
    u = airborne / flight.duration  # 0 at take-off, 1 at entry
    total_rotation = dive.half_somersaults * 180.0 + factors.entry_angle
    rotation = start_angle + spin * total_rotation * _smoothstep(min(u, 1.0), 0.02, 0.9)
    pose = _pose_keyframes(dive, line).at(u)
    twist = dive.half_twists * 180.0 * _smoothstep(u, 0.45, 0.82)
    # A poor body line wobbles: the body angle and the limbs shake.
    frame_jitter = jitter[min(int(u * len(jitter)), len(jitter) - 1)] if u < 1 else jitter[-1]
    rotation += line * (14.0 * math.sin(2 * math.pi * 3.0 * u + look.wobble_phase) + 6.0 * frame_jitter[0])
    pose.hip += line * 10.0 * frame_jitter[1]
    pose.knee = max(0.0, pose.knee + line * 10.0 * frame_jitter[2])

    if u <= 1.0:
        pelvis = flight.position(airborne)
        return BodyState(pelvis, rotation, twist, facing, pose)
    # Under water: the body keeps sliding along its axis, slowing down, then disappears.
    under = airborne - flight.duration
    x_entry, y_entry = flight.position(flight.duration)
    travel = 4.0 * (1.0 - math.exp(-under / 0.45))
    angle = math.radians(rotation)
    pelvis = (x_entry - math.sin(angle) * travel, y_entry + math.cos(angle) * travel)
    return BodyState(pelvis, rotation, twist, facing, pose, visible=pelvis[1] > -2.5)


def _limb_chain(root: np.ndarray, first_angle: float, second_angle: float, lengths: tuple[float, float]):
    """Two segments in the sagittal plane from ``root``; angles in degrees from straight down,
    positive towards the chest (+x)."""
    a = math.radians(first_angle)
    b = math.radians(second_angle)
    middle = root + lengths[0] * np.array([math.sin(a), -math.cos(a), 0.0])
    end = middle + lengths[1] * np.array([math.sin(b), -math.cos(b), 0.0])
    return middle, end


def skeleton(state: BodyState) -> dict[str, np.ndarray]:
    """World-plane (x, y) positions of the joints for ``state``."""
    pose = state.pose
    joints: dict[str, np.ndarray] = {"pelvis": np.zeros(3), "neck": np.array([0.0, NECK, 0.0]),
                                     "head": np.array([0.0, HEAD_CENTRE, 0.0])}
    for side, sign in (("l", 1.0), ("r", -1.0)):
        hip = np.array([0.0, 0.0, sign * HIP_HALF_WIDTH])
        knee_bend = pose.knee + (pose.scissor if sign < 0 else 0.0)
        hip_angle = pose.hip - (0.4 * pose.scissor if sign < 0 else 0.0)
        knee, ankle = _limb_chain(hip, hip_angle, hip_angle - knee_bend, (THIGH, SHIN))
        spread = np.array([0.0, 0.0, sign * pose.leg_spread])
        joints[f"hip_{side}"], joints[f"knee_{side}"], joints[f"ankle_{side}"] = hip, knee + spread * 0.5, ankle + spread
        shoulder = np.array([0.0, SHOULDER_HEIGHT, sign * SHOULDER_HALF_WIDTH])
        # Arm elevation is measured from down (0) through forward (90) to over the head (180).
        elbow, wrist = _limb_chain(shoulder, pose.shoulder, pose.shoulder + pose.elbow, (UPPER_ARM, FOREARM))
        arm_spread = np.array([0.0, 0.0, sign * pose.arm_spread])
        joints[f"shoulder_{side}"], joints[f"elbow_{side}"], joints[f"wrist_{side}"] = (
            shoulder, elbow + arm_spread * 0.5, wrist + arm_spread)
    twist = math.radians(state.twist)
    somersault = math.radians(state.somersault)
    cos_t, sin_t = math.cos(twist), math.sin(twist)
    cos_s, sin_s = math.cos(somersault), math.sin(somersault)
    projected = {}
    for name, (x, y, z) in joints.items():
        x_twisted = x * cos_t + z * sin_t  # rotation about the long (y) axis; z is dropped below
        x_body = state.facing * x_twisted
        projected[name] = np.array([
            state.pelvis[0] + x_body * cos_s + y * sin_s,
            state.pelvis[1] - x_body * sin_s + y * cos_s,
        ])
    return projected


# --------------------------------------------------------------------------- splash


@dataclass(frozen=True)
class Splash:
    """Drops thrown up at entry, a white crown, and foam that lingers; all scale with ``size``."""

    x: float
    entry_time: float
    size: float
    drop_offsets: np.ndarray  # [n, 5]: x0, vx, vy, radius, delay

    def drops_at(self, seconds: float) -> np.ndarray:
        """[m, 3] (x, y, radius) of the drops in the air at ``seconds``."""
        since = seconds - self.entry_time - self.drop_offsets[:, 4]
        airborne = since > 0
        since = since[airborne]
        drops = self.drop_offsets[airborne]
        x = self.x + drops[:, 0] + drops[:, 1] * since
        y = drops[:, 2] * since - 0.5 * GRAVITY * since * since
        keep = y > -0.05
        return np.stack([x[keep], y[keep], drops[keep, 3]], axis=1)


def plan_splash(factors: DiveFactors, flight: Flight, rng: np.random.Generator) -> Splash:
    size = factors.splash
    count = int(round(15 + 380 * size))
    x0 = rng.normal(0.0, 0.12 + 0.55 * size, count)
    vx = rng.normal(0.0, 0.3 + 1.6 * size, count)
    vy = rng.uniform(0.3, 1.0, count) * (2.0 + 7.5 * size)
    radius = rng.uniform(0.04, 0.09, count) * (1.0 + 2.2 * size)
    delay = rng.uniform(0.0, 0.1 + 0.3 * size, count)
    entry_x = flight.position(flight.duration)[0]
    return Splash(entry_x, APPROACH_SECONDS + flight.duration, size, np.stack([x0, vx, vy, radius, delay], axis=1))


# --------------------------------------------------------------------------- drawing


class Camera:
    """Maps world metres to (supersampled) pixels; tilts to follow the diver's height."""

    def __init__(self, scene: Scene, width: int, height: int, supersample: int):
        self.width = width * supersample
        self.height = height * supersample
        self.view_height = VIEW_HEIGHT / scene.zoom
        self.scale = self.height / self.view_height  # pixels per metre
        self.centre_x = scene.camera_x
        self.lowest_centre = VIEW_BOTTOM_AT_ENTRY + self.view_height / 2
        self.highest_centre = PLATFORM_HEIGHT + STANDING_HIP_HEIGHT + 1.5
        # The world picture spans every height the camera can show, with a margin.
        self.world_top = self.highest_centre + self.view_height / 2 + 0.5
        self.world_bottom = self.lowest_centre - self.view_height / 2 - 0.5

    def centre_for(self, pelvis_y: float) -> float:
        # A soft clamp: follow the diver, easing into the lowest framing instead of stopping dead.
        softness = 0.6
        excess = (pelvis_y + 0.3 - self.lowest_centre) / softness
        follow = self.lowest_centre + softness * (math.log1p(math.exp(-abs(excess))) + max(excess, 0.0))
        return min(follow, self.highest_centre)

    def world_row(self, y: float) -> float:
        return (self.world_top - y) * self.scale

    def world_column(self, x: float) -> float:
        return (x - self.centre_x) * self.scale + self.width / 2


def draw_world(scene: Scene, camera: Camera) -> np.ndarray:
    """The static venue (wall, platform tower, pool) as one tall picture the camera pans over."""
    rows = int(math.ceil((camera.world_top - camera.world_bottom) * camera.scale))
    image = Image.new("RGB", (camera.width, rows), scene.wall_colour)
    draw = ImageDraw.Draw(image)
    wall = np.array(scene.wall_colour, dtype=float)
    # Horizontal bands every 1.5 m and pillars give the tilting camera something to move past.
    y = math.floor(camera.world_bottom)
    while y < camera.world_top:
        top, bottom = camera.world_row(y + 0.75), camera.world_row(y)
        draw.rectangle([0, top, camera.width, bottom], fill=tuple(int(c) for c in wall * 0.85))
        y += 1.5
    for x in np.arange(-8.0, 8.0, 2.5):
        left = camera.world_column(x)
        draw.rectangle([left, 0, left + 0.25 * camera.scale, rows], fill=tuple(int(c) for c in wall * 0.7))
    banner_top = camera.world_row(7.0)
    draw.rectangle([camera.world_column(1.5), banner_top, camera.world_column(4.0), camera.world_row(6.2)],
                   fill=scene.banner_colour)
    # Platform tower: a concrete column and the 10 m slab ending at x = 0.
    concrete = (150, 150, 155)
    draw.rectangle([camera.world_column(-3.2), camera.world_row(PLATFORM_HEIGHT), camera.world_column(-1.6), rows],
                   fill=(125, 125, 130))
    draw.rectangle([camera.world_column(-9.0), camera.world_row(PLATFORM_HEIGHT),
                    camera.world_column(0.0), camera.world_row(PLATFORM_HEIGHT - 0.35)], fill=concrete)
    draw.rectangle([camera.world_column(-9.0), camera.world_row(PLATFORM_HEIGHT) - 0.04 * camera.scale,
                    camera.world_column(0.0), camera.world_row(PLATFORM_HEIGHT)], fill=(225, 225, 225))
    # Pool: water below y = 0, darker with depth, with ripple lines.
    surface = camera.world_row(0.0)
    water = np.array(scene.water_colour, dtype=float)
    depth_rows = rows - int(surface)
    pixels = np.asarray(image).copy()
    if depth_rows > 0:
        fade = np.linspace(1.0, 0.65, depth_rows)[:, None, None]
        pixels[int(surface):] = np.clip(water[None, None, :] * fade, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for depth in np.arange(0.15, 1.5, 0.22):
        row = camera.world_row(-depth)
        draw.line([0, row, camera.width, row], fill=tuple(int(c) for c in np.clip(water * 1.25, 0, 255)),
                  width=max(1, int(0.03 * camera.scale)))
    draw.line([0, surface, camera.width, surface], fill=(210, 230, 245), width=max(1, int(0.05 * camera.scale)))
    return np.asarray(image)


def _draw_body(draw: ImageDraw.ImageDraw, joints: dict[str, np.ndarray], look: Look, camera: Camera, top: float):
    def point(name):
        x, y = joints[name]
        return (camera.world_column(x), camera.world_row(y) - top)

    limb = max(2, int(round(LIMB_WIDTH * camera.scale)))
    torso = max(3, int(round(TORSO_WIDTH * camera.scale)))
    skin, suit = look.skin_colour, look.suit_colour
    far_skin = tuple(int(c * 0.8) for c in skin)
    # Far-side limbs first (darker), then the torso, then the near side.
    for side, colour in (("r", far_skin), ("l", skin)):
        if side == "l":
            draw.line([point("pelvis"), point("neck")], fill=suit, width=torso, joint="curve")
            for end in ("pelvis", "neck"):
                cx, cy = point(end)
                radius = torso / 2
                draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=suit)
            cx, cy = point("head")
            radius = HEAD_RADIUS * camera.scale
            draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=skin)
        draw.line([point(f"hip_{side}"), point(f"knee_{side}"), point(f"ankle_{side}")], fill=colour, width=limb,
                  joint="curve")
        draw.line([point(f"shoulder_{side}"), point(f"elbow_{side}"), point(f"wrist_{side}")], fill=colour,
                  width=max(2, int(limb * 0.8)), joint="curve")


def _draw_splash(overlay: ImageDraw.ImageDraw, splash: Splash, seconds: float, camera: Camera, top: float):
    since = seconds - splash.entry_time
    if since < 0:
        return
    size = splash.size
    column = camera.world_column(splash.x)
    surface = camera.world_row(0.0) - top
    scale = camera.scale
    # Foam: a flat white patch on the surface that spreads and fades; bigger splashes last longer.
    foam_life = 0.5 + 2.5 * size
    foam_alpha = int(230 * math.exp(-since / foam_life))
    half_width = (0.25 + (0.4 + 2.2 * size) * min(since / 0.4, 1.0)) * scale
    thickness = (0.08 + 0.35 * size) * scale
    overlay.ellipse([column - half_width, surface - thickness, column + half_width, surface + thickness],
                    fill=(245, 250, 255, foam_alpha))
    # Crown: a white column over the entry point that rises and collapses.
    crown_life = 0.35 + 0.9 * size
    if since < crown_life:
        phase = since / crown_life
        crown_height = (0.15 + 2.6 * size) * math.sin(math.pi * phase) * scale
        crown_half = (0.15 + 0.8 * size) * scale
        overlay.polygon([(column - crown_half, surface), (column - crown_half * 0.3, surface - crown_height),
                         (column + crown_half * 0.3, surface - crown_height), (column + crown_half, surface)],
                        fill=(240, 248, 255, int(220 * (1 - phase * 0.5))))
    for x, y, radius in splash.drops_at(seconds):
        cx, cy, r = camera.world_column(x), camera.world_row(y) - top, max(1.0, radius * scale)
        overlay.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(250, 252, 255, 215))


def render_dive(
    factors: DiveFactors,
    scene: Scene,
    look: Look,
    num_frames: int,
    width: int,
    height: int,
    rng: np.random.Generator,
    supersample: int = 2,
    world: np.ndarray | None = None,
) -> list[np.ndarray]:
    """The dive's frames as ``uint8 [height, width, 3]`` RGB arrays. ``world``, when given, must be
    ``draw_world(shot_scene(scene, look), camera)``."""
    scene = shot_scene(scene, look)
    camera = Camera(scene, width, height, supersample)
    if world is None:
        world = draw_world(scene, camera)
    flight = plan_flight(factors)
    splash = plan_splash(factors, flight, rng)
    jitter = rng.normal(0.0, 1.0, size=(24, 3))
    frames = []
    for index in range(num_frames):
        seconds = max(0.0, SECONDS_PER_DIVE * index / num_frames + look.time_offset)
        state = body_state(factors, flight, look, seconds, jitter)
        centre = camera.centre_for(state.pelvis[1])
        top = int(round(camera.world_row(centre + camera.view_height / 2)))
        top = min(max(top, 0), world.shape[0] - camera.height)
        background = world[top : top + camera.height]
        image = Image.fromarray(background.copy())
        if state.visible:
            _draw_body(ImageDraw.Draw(image), skeleton(state), look, camera, top)
        pixels = np.asarray(image)
        surface = int(round(camera.world_row(0.0) - top))
        if 0 <= surface < camera.height:
            # The submerged body shows faintly through the water.
            below = slice(max(surface, 0), camera.height)
            pixels = pixels.copy()
            pixels[below] = (0.75 * background[below] + 0.25 * pixels[below]).astype(np.uint8)
        image = Image.fromarray(pixels).convert("RGBA")
        overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
        _draw_splash(ImageDraw.Draw(overlay), splash, seconds, camera, top)
        image = Image.alpha_composite(image, overlay).convert("RGB")
        if scene.light != (1.0, 1.0, 1.0):
            lit = np.asarray(image).astype(np.float32) * np.asarray(scene.light, dtype=np.float32)
            image = Image.fromarray(np.clip(lit + 0.5, 0, 255).astype(np.uint8))
        if supersample > 1:
            image = image.reduce(supersample)
        frames.append(np.asarray(image))
    return frames
