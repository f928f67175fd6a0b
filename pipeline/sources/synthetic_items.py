"""What synthetic items look like: titles and tags from per-topic
vocabularies, likes/views from popularity, and covers drawn from per-topic shapes, textures and colours nudged by
the item's latent vector, so every modality carries signal about the planted latent structure (planted.py)."""

from __future__ import annotations

import colorsys
import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from pipeline.sources.planted import PlantedModel

MEAN_LOG_VIEWS = math.log(2000.0)
VIEWS_NOISE = 0.5  # sd of the log-views noise beyond popularity


# --------------------------------------------------------------------------------------------------
# Text: themes, titles, tags

# Each theme: (title words, tag names). Real English words, since a pretrained sentence encoder embeds the titles.
THEMES: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("recipe", "noodles", "spicy", "kitchen", "dumplings", "soup", "chef", "homemade", "delicious", "fried",
      "rice", "baking", "cake", "dinner", "sauce", "garlic"),
     ("food", "recipe", "cooking", "homemade", "chinese_food", "baking")),
    (("cat", "puppy", "kitten", "dog", "cute", "paws", "fluffy", "meow", "bark", "pet", "hamster", "adopted",
      "sleepy", "kitty", "furry"),
     ("pets", "cats", "dogs", "cute_animals", "puppy", "kitten")),
    (("gameplay", "boss", "level", "minecraft", "controller", "speedrun", "console", "multiplayer", "quest",
      "ranked", "victory", "gamer", "pixel", "arcade", "loot"),
     ("gaming", "games", "minecraft", "esports", "gameplay", "speedrun")),
    (("trip", "beach", "mountains", "hotel", "flight", "island", "backpacking", "sunset", "passport", "tourist",
      "journey", "hiking", "village", "explore", "destination"),
     ("travel", "vacation", "adventure", "beach", "wanderlust", "hiking")),
    (("workout", "gym", "squats", "abs", "cardio", "muscle", "training", "pushups", "stretching", "sweat",
      "protein", "reps", "treadmill", "strength", "yoga"),
     ("fitness", "workout", "gym", "health", "bodybuilding", "yoga")),
    (("lipstick", "foundation", "eyeliner", "makeup", "tutorial", "skincare", "blush", "glowy", "mascara",
      "contour", "beauty", "palette", "brows", "serum", "cosmetics"),
     ("makeup", "beauty", "skincare", "cosmetics", "tutorial", "glam")),
    (("song", "guitar", "piano", "cover", "melody", "concert", "singing", "drums", "lyrics", "band", "acoustic",
      "rhythm", "karaoke", "album", "violin"),
     ("music", "singing", "guitar", "piano", "cover_song", "live_music")),
    (("goal", "soccer", "striker", "penalty", "match", "stadium", "dribble", "league", "keeper", "freekick",
      "tackle", "champions", "referee", "midfielder", "fans"),
     ("football", "soccer", "goals", "premier_league", "sports", "highlights")),
    (("engine", "drift", "supercar", "racing", "turbo", "horsepower", "garage", "sedan", "exhaust", "wheels",
      "highway", "roadtrip", "motor", "tuning", "electric"),
     ("cars", "racing", "supercars", "automotive", "drift", "car_review")),
    (("choreography", "dancing", "hiphop", "moves", "ballet", "routine", "dancer", "steps", "breakdance",
      "groove", "shuffle", "salsa", "spin", "freestyle", "rehearsal"),
     ("dance", "choreography", "dancing", "hiphop", "ballet", "dance_challenge")),
    (("experiment", "chemistry", "physics", "rocket", "telescope", "planets", "atoms", "reaction", "laboratory",
      "microscope", "galaxy", "molecules", "scientist", "theory", "astronomy"),
     ("science", "experiment", "space", "physics", "chemistry", "education")),
    (("prank", "funny", "joke", "laugh", "improv", "hilarious", "parody", "standup", "skit", "bloopers", "meme",
      "awkward", "roast", "giggles", "comedian"),
     ("comedy", "prank", "memes", "standup", "jokes", "parody")),
    (("outfit", "dress", "sneakers", "streetwear", "jacket", "style", "haul", "jeans", "runway", "lookbook",
      "wardrobe", "designer", "boots", "thrift", "accessories"),
     ("fashion", "outfits", "style", "streetwear", "haul", "ootd")),
    (("plants", "garden", "flowers", "seeds", "soil", "tomatoes", "roses", "watering", "harvest", "greenhouse",
      "cactus", "succulents", "compost", "blossom", "orchard"),
     ("gardening", "plants", "garden", "flowers", "houseplants", "green_thumb")),
    (("painting", "drawing", "sketch", "watercolor", "canvas", "portrait", "brush", "acrylic", "illustration",
      "sculpture", "mural", "doodle", "artist", "gallery", "charcoal"),
     ("art", "painting", "drawing", "illustration", "watercolor", "artist")),
    (("smartphone", "laptop", "unboxing", "gadget", "review", "keyboard", "headphones", "camera", "processor",
      "battery", "charger", "tablet", "smartwatch", "wireless", "upgrade"),
     ("tech", "gadgets", "unboxing", "smartphone", "tech_review", "electronics")),
    (("dunk", "basketball", "hoops", "nba", "rebound", "layup", "court", "crossover", "buzzer", "playoffs",
      "slam", "assist", "jumpshot", "dribbling", "rookie"),
     ("basketball", "nba", "hoops", "dunks", "sports", "ballislife")),
    (("baby", "toddler", "newborn", "diaper", "crawling", "giggle", "nursery", "bottle", "lullaby", "stroller",
      "infant", "bedtime", "pacifier", "mommy", "cradle"),
     ("baby", "parenting", "toddler", "family", "newborn", "mom_life")),
    (("ancient", "empire", "castle", "pharaoh", "medieval", "knights", "pyramids", "dynasty", "emperor", "ruins",
      "kingdom", "battle", "archaeology", "samurai", "vikings"),
     ("history", "ancient", "medieval", "documentary", "archaeology", "empires")),
    (("wildlife", "forest", "lion", "elephant", "ocean", "whales", "jungle", "eagle", "waterfall", "safari",
      "wolves", "birds", "coral", "rainforest", "tiger"),
     ("nature", "wildlife", "animals", "ocean", "safari", "planet_earth")),
    (("crafts", "handmade", "woodworking", "tools", "glue", "repair", "build", "furniture", "sewing", "knitting",
      "upcycle", "hammer", "drill", "workshop", "carpentry"),
     ("diy", "crafts", "woodworking", "handmade", "home_improvement", "sewing")),
    (("anime", "manga", "cosplay", "ninja", "otaku", "episode", "kawaii", "character", "sword", "shonen",
      "villain", "figure", "opening", "naruto", "ghibli"),
     ("anime", "manga", "cosplay", "otaku", "japanese_animation", "weeb")),
    (("stocks", "investing", "money", "crypto", "budget", "savings", "bitcoin", "trading", "wealth", "income",
      "economy", "dividends", "market", "bank", "salary"),
     ("finance", "investing", "money", "crypto", "stocks", "personal_finance")),
    (("skateboard", "kickflip", "ramp", "skatepark", "ollie", "grind", "tricks", "helmet", "bmx", "bike",
      "cycling", "wheelie", "trail", "downhill", "scooter"),
     ("skateboarding", "bmx", "cycling", "extreme_sports", "tricks", "skatepark")),
    (("fishing", "lake", "bait", "trout", "boat", "catch", "river", "rod", "salmon", "reel", "angler", "pond",
      "bass", "hook", "fisherman"),
     ("fishing", "outdoors", "bass_fishing", "fly_fishing", "angling", "catch_and_release")),
    (("ghost", "haunted", "scary", "creepy", "horror", "midnight", "abandoned", "paranormal", "zombie", "monster",
      "nightmare", "spooky", "cemetery", "shadow", "legend"),
     ("horror", "scary", "paranormal", "ghost_stories", "haunted", "creepy")),
    (("exam", "study", "notes", "homework", "library", "lecture", "university", "math", "essay", "vocabulary",
      "classroom", "teacher", "grades", "revision", "textbook"),
     ("study", "education", "studytok", "students", "exam_prep", "school")),
)
# When topics outnumber themes, topic t reuses theme t % len(THEMES) with its own pair of qualifier words (the
# (t - len(THEMES))-th pair of QUALIFIERS), used in every title and as tags, so reused themes stay distinguishable.
QUALIFIERS = (
    "winter", "summer", "beginner", "extreme", "retro", "cheap", "kids", "luxury", "vintage", "tiny", "giant",
    "japanese", "korean", "french", "italian", "mexican", "indian", "classic", "modern", "urban", "rural", "epic",
    "relaxing", "rainy", "golden", "arctic", "desert", "tropical", "royal", "cozy", "neon", "underwater", "robot",
    "futuristic", "snowy", "autumn", "spring", "midsummer", "weekend", "hidden",
)
MAX_TOPICS = len(THEMES) + math.comb(len(QUALIFIERS), 2)
FILLER = ("my", "best", "new", "today", "vlog", "the", "with", "this", "first", "day", "ever", "amazing", "wow",
          "life", "challenge", "how", "to", "try", "part", "top", "2", "3", "10", "100", "2022", "2023", "official",
          "full", "video", "episode", "you", "must", "watch", "so", "good")
GENERIC_TAGS = ("funny", "daily", "trending", "vlog", "fyp", "viral", "life")
P_COMMA = 0.1
P_GENERIC_TAG = 0.15
P_THEME_WORD, P_FILLER_WORD, P_NOISE_WORD = 0.65, 0.27, 0.08  # noise: a word of any theme


@dataclass(frozen=True)
class TopicText:
    """A topic's vocabulary: title words (Zipf-weighted by position), qualifiers in every title, tag names."""

    words: tuple[str, ...]
    qualifiers: tuple[str, ...]
    tags: tuple[str, ...]


def topic_texts(n_topics: int, rng: np.random.Generator) -> list[TopicText]:
    """One TopicText per topic (n_topics <= MAX_TOPICS); topics past len(THEMES) reuse a theme with a distinct
    pair of qualifiers each."""
    pairs = itertools.islice(itertools.combinations(QUALIFIERS, 2), max(0, n_topics - len(THEMES)))
    qualifier_pairs = [()] * min(n_topics, len(THEMES)) + list(pairs)
    if len(qualifier_pairs) < n_topics:
        raise ValueError(f"n_topics={n_topics} exceeds the {MAX_TOPICS} distinguishable topics")
    out = []
    for t, qualifiers in enumerate(qualifier_pairs):
        words, tags = THEMES[t % len(THEMES)]
        words = tuple(rng.permutation(words))  # per-topic word frequencies (Zipf over this order)
        topic_tags = tuple(rng.choice(tags, size=rng.integers(3, 7), replace=False)) + qualifiers
        out.append(TopicText(words=words, qualifiers=qualifiers, tags=topic_tags))
    return out


def make_title(text: TopicText, all_words: tuple[str, ...], rng: np.random.Generator) -> str:
    """A 4-10 word title: >= 2 words of the topic's theme, filler, the odd word of another theme; 10% hold a
    comma. Never a newline or double quote."""
    n = int(rng.integers(4, 11)) - len(text.qualifiers)
    n_theme, n_filler, n_noise = (int(c) for c in rng.multinomial(n - 2, [P_THEME_WORD, P_FILLER_WORD, P_NOISE_WORD])
                                  + (2, 0, 0))
    zipf = 1.0 / np.arange(1, len(text.words) + 1) ** 0.7
    # Without replacement within a kind, so a title rarely repeats a word.
    words = ([text.words[j] for j in rng.choice(len(text.words), size=n_theme, replace=False, p=zipf / zipf.sum())]
             + [FILLER[j] for j in rng.choice(len(FILLER), size=n_filler, replace=False)]
             + [all_words[j] for j in rng.choice(len(all_words), size=n_noise, replace=False)])
    words = [words[j] for j in rng.permutation(len(words))]
    at = int(rng.integers(len(words) + 1))
    words[at:at] = text.qualifiers
    if rng.random() < P_COMMA:
        cut = int(rng.integers(1, len(words)))
        return " ".join(words[:cut]) + ", " + " ".join(words[cut:])
    return " ".join(words)


def make_titles(item_topic: np.ndarray, texts: list[TopicText], rng: np.random.Generator) -> list[str]:
    """(N,) topics of items 1..N -> their N titles."""
    all_words = tuple(w for words, _tags in THEMES for w in words)
    return [make_title(texts[t], all_words, rng) for t in item_topic]


def make_tags(item_topic: np.ndarray, texts: list[TopicText], rng: np.random.Generator) -> list[list[str]]:
    """(N,) topics -> N lists of 1-4 distinct tag names, each mostly from the topic, else generic."""
    out = []
    for t in item_topic:
        k = int(rng.integers(1, 5))
        tags = texts[t].tags
        n_topic = min(int(rng.binomial(k, 1 - P_GENERIC_TAG)), len(tags))
        chosen = [tags[j] for j in rng.choice(len(tags), size=n_topic, replace=False)]
        chosen += [GENERIC_TAGS[j] for j in rng.choice(len(GENERIC_TAGS), size=k - n_topic, replace=False)]
        out.append(chosen)
    return out


def make_likes_views(model: PlantedModel, n_topics: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(N,) int64 likes and views of items 1..N: log views = MEAN_LOG_VIEWS + pop + noise, likes ~ Binomial(views,
    a per-topic like rate)."""
    like_rate = rng.uniform(0.02, 0.15, size=n_topics)
    log_views = MEAN_LOG_VIEWS + model.item_log_pop[1:] + VIEWS_NOISE * rng.standard_normal(model.n_items)
    views = np.round(np.exp(log_views)).astype(np.int64)
    likes = rng.binomial(views, like_rate[model.item_topic[1:]]).astype(np.int64)
    return likes, views


# --------------------------------------------------------------------------------------------------
# Covers

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "diamond", "hexagon")
TEXTURES = ("stripes", "dots", "checker", "gradient", "noise", "plain")
PIXEL_NOISE = 6.0  # sd of the per-pixel noise, in 0..255 units


@dataclass(frozen=True)
class TopicStyle:
    """A topic's cover look: background HSV, shape colour HSV, shape kind, texture kind, texture period scale."""

    background: tuple[float, float, float]
    foreground: tuple[float, float, float]
    shape: str
    texture: str
    period: float


def topic_styles(n_topics: int, rng: np.random.Generator) -> list[TopicStyle]:
    """One style per topic. Hues step by the golden ratio so any number of topics spreads around the wheel;
    shapes and textures cycle with coprime lengths (8, 6), giving 24 distinct combinations."""
    offset = rng.random()
    out = []
    for t in range(n_topics):
        hue = (offset + t * 0.6180339887) % 1.0
        val = rng.uniform(0.45, 0.95)
        out.append(TopicStyle(
            background=(hue, rng.uniform(0.45, 0.95), val),
            foreground=((hue + 0.5) % 1.0, rng.uniform(0.3, 0.9), min(1.0, max(0.25, 1.25 - val))),
            shape=SHAPES[t % len(SHAPES)], texture=TEXTURES[t % len(TEXTURES)], period=rng.uniform(0.08, 0.16)))
    return out


def _rgb(hsv: tuple[float, float, float]) -> np.ndarray:
    """(3,) float RGB in 0..255; hue wraps, saturation and value are clipped to [0, 1]."""
    h, s, v = hsv
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))) * 255.0


def _texture(kind: str, base: np.ndarray, yy: np.ndarray, xx: np.ndarray, period: float,
             rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float background with texture `kind` applied; yy, xx (H, W) pixel coordinates; period in px."""
    phase = rng.uniform(0, period)
    if kind == "stripes":
        return base * (1 - 0.35 * (((xx + yy + phase) // (period / 2)) % 2))[..., None]
    if kind == "dots":
        dy, dx = (yy + phase) % period - period / 2, (xx + phase) % period - period / 2
        return base + 90.0 * (dy**2 + dx**2 < (period / 4) ** 2)[..., None]
    if kind == "checker":
        return base * (1 - 0.3 * (((xx + phase) // period + (yy + phase) // period) % 2))[..., None]
    if kind == "gradient":
        return base * (0.45 + 0.65 * xx / xx.max())[..., None]
    if kind == "noise":  # coarse blotches: an 8x6 random grid blown up to the cover
        h, w = yy.shape
        blotch = rng.uniform(-50, 50, size=(6, 8))
        return base + np.kron(blotch, np.ones((-(-h // 6), -(-w // 8))))[:h, :w, None]
    if kind == "plain":
        return base
    raise ValueError(f"unknown texture {kind!r} (known: {', '.join(TEXTURES)})")


def _polygon(cx: float, cy: float, r: float, n: int, rot: float, inner: float | None = None) -> list[tuple]:
    """Vertices of a regular n-gon (or an n-pointed star when `inner` radius is given) around (cx, cy)."""
    radii = [r, inner] * n if inner is not None else [r] * n
    k = len(radii)
    return [(cx + rad * math.cos(rot + 2 * math.pi * j / k), cy + rad * math.sin(rot + 2 * math.pi * j / k))
            for j, rad in enumerate(radii)]


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, rot: float,
                fill: tuple[int, int, int]) -> None:
    """One `kind` shape of radius r (px) centred at (cx, cy), rotated by `rot` radians where that shows."""
    box = (cx - r, cy - r, cx + r, cy + r)
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    elif kind == "triangle":
        draw.polygon(_polygon(cx, cy, r, 3, rot), fill=fill)
    elif kind == "star":
        draw.polygon(_polygon(cx, cy, r, 5, rot, inner=r * 0.45), fill=fill)
    elif kind == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(r / 3)))
    elif kind == "cross":
        t = r / 3
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fill)
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fill)
    elif kind == "diamond":
        draw.polygon(_polygon(cx, cy, r, 4, 0.0), fill=fill)
    elif kind == "hexagon":
        draw.polygon(_polygon(cx, cy, r, 6, rot), fill=fill)
    else:
        raise ValueError(f"unknown shape {kind!r} (known: {', '.join(SHAPES)})")


def draw_cover(style: TopicStyle, latent_offset: np.ndarray, size: int, rng: np.random.Generator) -> Image.Image:
    """An RGB cover, (size*4//3) x size: the topic's background with per-item jitter, its texture, 2-5 of its
    shapes at random positions and sizes, then pixel noise. `latent_offset` (>= 2,) = the item's latent minus
    its topic centroid; its first two coordinates nudge hue and brightness, so covers carry a little item signal.
    """
    h, w = size, size * 4 // 3
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    bh, bs, bv = style.background
    bg = _rgb((bh + 0.02 * rng.standard_normal() + 0.1 * latent_offset[0], bs + 0.05 * rng.standard_normal(),
               bv + 0.05 * rng.standard_normal() + 0.1 * latent_offset[1]))
    pixels = _texture(style.texture, np.broadcast_to(bg, (h, w, 3)), yy, xx, style.period * size, rng)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    fh, fs, fv = style.foreground
    for _ in range(int(rng.integers(2, 6))):
        fill = _rgb((fh + 0.03 * rng.standard_normal(), fs, fv + 0.05 * rng.standard_normal()))
        _draw_shape(draw, style.shape, rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.1, 0.25) * h,
                    rng.uniform(0, 2 * math.pi), tuple(int(c) for c in fill))
    noisy = np.asarray(img, dtype=np.float32) + rng.standard_normal((h, w, 3), dtype=np.float32) * PIXEL_NOISE
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def write_covers(covers_dir: Path, model: PlantedModel, centroids: np.ndarray, styles: list[TopicStyle],
                 size: int, rng: np.random.Generator) -> None:
    """covers_dir/<i>.jpg for items 1..N (quality 90; PIL's JPEG output is deterministic for identical pixels)."""
    covers_dir.mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(1, model.n_items + 1), desc="covers", unit="cover"):
        t = model.item_topic[i]
        img = draw_cover(styles[t], model.item_latent[i] - centroids[t], size, rng)
        img.save(covers_dir / f"{i}.jpg", format="JPEG", quality=90)
