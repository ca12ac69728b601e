"""The values the synthetic corpus is made of, split so that held-out conversations use values never trained on.

Every atomic value — a city, a word, a ticker, a pseudo-word — belongs to exactly one split by a hash of its text
(``heldout_atom``: CRC-32 mod 5 == 0, about a fifth), and composite values (file paths, e-mail addresses, search
queries, tool names) are built only from atoms of their own split. So the held-out split shares the *kinds* of
values and the phrasing with training, never the values themselves: a model must copy them from the prompt.
Pseudo-words (syllable strings such as ``brouvek``) make the space of names and places effectively unbounded.
Numbers, dates, enum members and parameter names are shared by both splits; they are not values to copy from
memory but formats to follow.

Pure Python (no torch): the corpus is a function of the seed alone.
"""

from __future__ import annotations

import random
import zlib
from typing import Literal, Sequence

Split = Literal["train", "heldout"]

CITIES = (
    "Paris", "London", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Warsaw", "Lisbon", "Dublin", "Oslo",
    "Stockholm", "Helsinki", "Copenhagen", "Amsterdam", "Brussels", "Zurich", "Geneva", "Munich", "Hamburg",
    "Milan", "Naples", "Athens", "Istanbul", "Cairo", "Nairobi", "Lagos", "Accra", "Dakar", "Tunis", "Casablanca",
    "Johannesburg", "Cape Town", "Tokyo", "Osaka", "Kyoto", "Seoul", "Busan", "Beijing", "Shanghai", "Shenzhen",
    "Chengdu", "Hong Kong", "Taipei", "Manila", "Hanoi", "Bangkok", "Jakarta", "Singapore", "Kuala Lumpur",
    "Delhi", "Mumbai", "Chennai", "Kolkata", "Karachi", "Dhaka", "Kathmandu", "Tehran", "Baghdad", "Riyadh",
    "Dubai", "Doha", "Sydney", "Melbourne", "Perth", "Auckland", "Wellington", "Toronto", "Montreal", "Vancouver",
    "Chicago", "Boston", "Seattle", "Denver", "Austin", "Dallas", "Houston", "Miami", "Atlanta", "Phoenix",
    "New York", "Los Angeles", "San Francisco", "Mexico City", "Bogota", "Lima", "Quito", "Santiago",
    "Buenos Aires", "Montevideo", "Sao Paulo", "Rio de Janeiro", "Havana", "Reykjavik", "Tallinn", "Riga",
    "Vilnius", "Kyiv", "Minsk", "Bucharest", "Sofia", "Belgrade", "Zagreb", "Budapest", "Krakow", "Porto",
    "Seville", "Valencia", "Marseille", "Lyon", "Nice", "Glasgow", "Edinburgh", "Manchester", "Bristol",
)
WORDS = (
    "river", "garden", "market", "engine", "silver", "harbor", "forest", "winter", "summer", "planet", "rocket",
    "violin", "coffee", "bridge", "castle", "desert", "island", "jungle", "meadow", "mountain", "ocean", "valley",
    "canyon", "glacier", "lantern", "mirror", "pepper", "tomato", "carrot", "butter", "cookie", "noodle", "pizza",
    "salad", "pillow", "blanket", "window", "ladder", "hammer", "wallet", "ticket", "pencil", "marble", "copper",
    "cotton", "velvet", "orange", "purple", "yellow", "falcon", "rabbit", "turtle", "dolphin", "panda", "tiger",
    "zebra", "parrot", "spider", "beetle", "cactus", "orchid", "maple", "willow", "cedar", "bamboo", "pebble",
    "thunder", "rainbow", "comet", "galaxy", "nebula", "quantum", "circuit", "signal", "kernel", "socket",
    "packet", "router", "compiler", "database", "server", "cluster", "tensor", "matrix", "vector", "gradient",
    "battery", "sensor", "camera", "printer", "tablet", "laptop", "monitor", "keyboard", "speaker", "guitar",
    "piano", "trumpet", "ballet", "poetry", "novel", "theater", "museum", "library", "stadium", "airport",
    "station", "village", "festival", "holiday", "recipe", "budget", "invoice", "contract", "meeting", "project",
    "report", "summary", "history", "science", "finance", "health", "travel", "weather", "climate", "energy",
)
SYMBOLS = (
    "AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "TSLA", "META", "NFLX", "INTC", "AMD", "ORCL", "IBM", "CSCO", "ADBE",
    "CRM", "QCOM", "TXN", "AVGO", "SHOP", "UBER", "LYFT", "SNAP", "PINS", "SPOT", "SQ", "PYPL", "V", "MA", "JPM",
    "BAC", "WFC", "GS", "MS", "C", "KO", "PEP", "MCD", "SBUX", "NKE", "DIS", "WMT", "TGT", "COST", "HD", "LOW",
    "BA", "GE", "F", "GM", "TM", "HMC", "SONY", "BABA", "JD", "BIDU", "TSM", "ASML", "SAP", "SIE", "BMW", "VOW",
)
LANGUAGES = (
    "French", "German", "Spanish", "Italian", "Portuguese", "Dutch", "Swedish", "Norwegian", "Danish", "Finnish",
    "Polish", "Czech", "Greek", "Turkish", "Arabic", "Hebrew", "Hindi", "Bengali", "Urdu", "Persian", "Chinese",
    "Japanese", "Korean", "Vietnamese", "Thai", "Indonesian", "Malay", "Swahili", "Russian", "Ukrainian",
    "Romanian", "Hungarian", "Icelandic", "Irish", "Welsh",
)
CONDITIONS = ("sunny", "cloudy", "rainy", "windy", "snowy", "foggy", "stormy", "clear", "humid", "hazy")
EXTENSIONS = ("txt", "md", "py", "json", "csv", "log", "yaml", "toml", "ini", "html")
TASKS = (
    "call the dentist", "buy milk", "water the plants", "pay the rent", "book a table", "renew the passport",
    "send the report", "feed the cat", "back up the laptop", "pick up the kids", "cancel the gym", "fix the bike",
    "email the landlord", "order new shoes", "clean the kitchen", "charge the car", "return the library books",
    "submit the invoice", "check the oven", "walk the dog", "update the budget", "prepare the slides",
)
PHRASES = (
    "good morning", "see you soon", "thank you very much", "where is the station", "the food was great",
    "happy birthday", "I love this city", "the meeting starts at noon", "please close the door", "it is cold today",
    "the train is late", "welcome to the team", "how much does it cost", "the museum opens at nine",
)
PROSE_NOUNS = (
    "king", "queen", "lord", "lady", "knight", "sailor", "stranger", "child", "soldier", "poet", "shepherd",
    "night", "morning", "storm", "sea", "heart", "crown", "sword", "letter", "rose", "moon", "star", "door",
)
PROSE_VERBS = (
    "walked", "waited", "sang", "fell", "spoke", "wept", "laughed", "slept", "wandered", "turned", "rose", "stood",
    "dreamed", "listened", "returned", "whispered",
)
PROSE_LINKS = ("and", "but", "while", "for", "when", "as", "though", "until")
PROSE_PLACES = ("by the", "beyond the", "under the", "near the", "across the", "within the", "upon the")
PROSE_OLD = ("thou art", "I pray thee", "hath", "doth", "O", "alas", "methinks", "my good lord", "'tis", "ere")
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "tr", "st", "gr", "pl",
           "sk", "ch", "sh", "th", "kr", "dr", "fl", "j", "h", "w", "y")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ee", "oa", "ie")
_CODAS = ("", "", "", "n", "r", "l", "s", "k", "m", "x", "t", "nd", "rk")


def heldout_atom(text: str) -> bool:
    """Whether an atomic value belongs to the held-out split (about one in five, by CRC-32 of its text)."""
    return zlib.crc32(text.lower().encode()) % 5 == 0


def split_of(items: Sequence[str], split: Split) -> tuple[str, ...]:
    """The members of ``items`` that belong to ``split``."""
    want = split == "heldout"
    return tuple(x for x in items if heldout_atom(x) == want)


class Pools:
    """Draws values of one split. Every method takes its randomness from ``rng`` (the caller's per-example
    ``random.Random``), so a conversation is a pure function of its seed.

    Example:
        >>> heldout_atom(Pools("heldout").city(random.Random(0)))
        True
    """

    def __init__(self, split: Split) -> None:
        self.split = split
        self.cities = split_of(CITIES, split)
        self.words = split_of(WORDS, split)
        self.symbols = split_of(SYMBOLS, split)
        self.languages = split_of(LANGUAGES, split)
        self.tasks = split_of(TASKS, split)
        self.phrases = split_of(PHRASES, split)

    def pseudo(self, rng: random.Random, syllables: int | None = None) -> str:
        """A pronounceable pseudo-word of this split (``zoukel``, ``trimand``)."""
        n = syllables or rng.choice((2, 2, 2, 3))
        while True:
            w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(n))
            if 4 <= len(w) <= 9 and heldout_atom(w) == (self.split == "heldout") and w not in WORDS:
                return w

    def city(self, rng: random.Random) -> str:
        """A real city of this split, or (40 %) an invented one."""
        if rng.random() < 0.6:
            return rng.choice(self.cities)
        return self.pseudo(rng).capitalize()

    def word(self, rng: random.Random) -> str:
        """An English word or (30 %) a pseudo-word."""
        return rng.choice(self.words) if rng.random() < 0.7 else self.pseudo(rng)

    def path(self, rng: random.Random) -> str:
        """A file path such as ``/home/zoukel/notes/river.md`` or ``docs/report.txt``."""
        return f"{self.directory(rng)}/{self.word(rng)}.{rng.choice(EXTENSIONS)}"

    def directory(self, rng: random.Random) -> str:
        """A directory path, absolute or relative."""
        parts = [self.word(rng) for _ in range(rng.choice((1, 2, 2)))]
        if rng.random() < 0.4:
            return "/home/" + self.pseudo(rng, 2) + "/" + "/".join(parts)
        return ("./" if rng.random() < 0.3 else "") + "/".join(parts)

    def query(self, rng: random.Random) -> str:
        """A two-to-four word search query."""
        return " ".join(self.word(rng) for _ in range(rng.choice((2, 2, 3))))

    def symbol(self, rng: random.Random) -> str:
        """A stock ticker: a real one of this split or (50 %) three or four random capitals."""
        if rng.random() < 0.5:
            return rng.choice(self.symbols)
        while True:
            s = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(rng.choice((3, 4))))
            if heldout_atom(s) == (self.split == "heldout") and s not in SYMBOLS:
                return s

    def email(self, rng: random.Random) -> str:
        """An e-mail address built from pseudo-words."""
        return f"{self.pseudo(rng, 2)}@{self.pseudo(rng, 2)}.{rng.choice(('com', 'org', 'net', 'io'))}"

    def language(self, rng: random.Random) -> str:
        return rng.choice(self.languages)

    def task(self, rng: random.Random) -> str:
        """A reminder task such as ``water the plants`` (or a made-up ``check the zoukel``)."""
        if rng.random() < 0.6:
            return rng.choice(self.tasks)
        return f"{rng.choice(('check', 'fix', 'clean', 'buy', 'find', 'call'))} the {self.word(rng)}"

    def phrase(self, rng: random.Random) -> str:
        """A short phrase to echo or translate."""
        if rng.random() < 0.5:
            return rng.choice(self.phrases)
        return " ".join(self.word(rng) for _ in range(rng.choice((2, 3))))

    def prose(self, rng: random.Random) -> str:
        """A fragment of narrative prose or old-fashioned verse that asks nothing (a benchmark's filler prompt is
        such text), sometimes starting or ending mid-sentence, and sometimes naming a city or the weather."""
        def clause() -> str:
            who = rng.choice((f"the {rng.choice(PROSE_NOUNS)}", f"the {self.word(rng)}", self.pseudo(rng).title(),
                              "she", "he", "they", "I"))
            where = rng.choice((f"{rng.choice(PROSE_PLACES)} {rng.choice(PROSE_NOUNS)}",
                                f"{rng.choice(PROSE_PLACES)} {self.word(rng)}", f"in {self.city(rng)}",
                                f"{rng.choice(PROSE_PLACES)} {rng.choice(CONDITIONS)} {rng.choice(PROSE_NOUNS)}"))
            c = f"{who} {rng.choice(PROSE_VERBS)} {where}"
            return f"{rng.choice(PROSE_OLD)}, {c}" if rng.random() < 0.25 else c
        sentences = []
        for _ in range(rng.randint(1, 4)):
            parts = [clause() for _ in range(rng.randint(1, 3))]
            text = parts[0] + "".join(f"{rng.choice((',', ';', ''))} {rng.choice(PROSE_LINKS)} {p}" for p in parts[1:])
            sentences.append(text[0].upper() + text[1:] + rng.choice((".", ".", "!", "?", ";", ":")))
        out = " ".join(sentences)
        if rng.random() < 0.3:
            out = out[0].lower() + out[1:]
        if rng.random() < 0.3:
            out = out[:-1]
        return out

    def tool_name(self, rng: random.Random, verbs: Sequence[str], nouns: Sequence[str]) -> str:
        """A tool name. Training names are mostly made with pseudo-words (so writing one means copying it from the
        declaration) and sometimes ``verb_noun`` from the family's vocabulary; held-out names always contain a
        held-out pseudo-word, so none of them ever appears in training."""
        pw = self.pseudo(rng, rng.choice((1, 2)) if self.split == "train" else 2)
        shapes = [f"{pw}_{rng.choice(nouns)}", f"{rng.choice(verbs)}_{pw}", pw, f"{rng.choice(verbs)}{pw.title()}"]
        if self.split == "train" and rng.random() < 0.15:
            return f"{rng.choice(verbs)}_{rng.choice(nouns)}"
        return rng.choice(shapes)


def date(rng: random.Random) -> str:
    """An ISO date in 2025–2027."""
    return f"{rng.randint(2025, 2027)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def clock(rng: random.Random) -> str:
    """A 24-hour time ``HH:MM``."""
    return f"{rng.randint(0, 23):02d}:{rng.choice((0, 5, 10, 15, 20, 30, 40, 45, 50)):02d}"
