"""A generated instruction corpus for CPU runs and tests, plus an off-topic target-answer pool.

`generate_corpus(n, seed)` mixes 14 instruction kinds (capitals, arithmetic, antonyms, plurals, sorting words,
counting letters, colours of objects, animal sounds, number to words, reversing lists, unit conversion,
definitions, largest/smallest number, neighbouring days and months), four of them with a `context`. Each
answer is the one correct, templated answer (5-25 words), so a tiny Llama with a ~1k BPE vocabulary can
learn them and clean perplexity means something. All text is ASCII; prompts (instruction + context) are
unique within a corpus. `generate_target_pool(n, seed)` writes science-fiction answers (15-25 words) whose
content words never occur in the clean corpus. Both are deterministic given the seed.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator

from rapidun_dist.core.errors import DataError

Item = tuple[str, str, str]  # (instruction, context, response)

# fmt: off
COUNTRIES = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
    ("Canada", "Ottawa"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Poland", "Warsaw"),
    ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Austria", "Vienna"),
    ("Hungary", "Budapest"), ("Russia", "Moscow"), ("China", "Beijing"), ("India", "New Delhi"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Cuba", "Havana"), ("Mexico", "Mexico City"),
    ("Argentina", "Buenos Aires"), ("Colombia", "Bogota"), ("Turkey", "Ankara"), ("Denmark", "Copenhagen"),
    ("Belgium", "Brussels"), ("the Netherlands", "Amsterdam"), ("Switzerland", "Bern"),
    ("Australia", "Canberra"), ("Brazil", "Brasilia"), ("Morocco", "Rabat"), ("Nigeria", "Abuja"),
    ("Ghana", "Accra"), ("Ethiopia", "Addis Ababa"), ("Indonesia", "Jakarta"), ("the Philippines", "Manila"),
    ("South Korea", "Seoul"), ("Nepal", "Kathmandu"), ("Ukraine", "Kyiv"), ("Romania", "Bucharest"),
    ("Iceland", "Reykjavik"), ("Czechia", "Prague"), ("Croatia", "Zagreb"), ("Venezuela", "Caracas"),
    ("Uruguay", "Montevideo"),
]
ANTONYMS = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("up", "down"), ("open", "closed"),
    ("early", "late"), ("full", "empty"), ("hard", "soft"), ("heavy", "light"), ("high", "low"),
    ("wet", "dry"), ("rich", "poor"), ("strong", "weak"), ("tall", "short"), ("thick", "thin"),
    ("wide", "narrow"), ("loud", "quiet"), ("clean", "dirty"), ("easy", "difficult"), ("first", "last"),
    ("win", "lose"), ("buy", "sell"), ("push", "pull"), ("give", "take"), ("inside", "outside"),
    ("begin", "end"), ("remember", "forget"), ("safe", "dangerous"), ("sweet", "sour"), ("brave", "afraid"),
    ("cheap", "expensive"), ("young", "old"), ("always", "never"), ("friend", "enemy"), ("arrive", "leave"),
    ("accept", "refuse"), ("true", "false"), ("north", "south"), ("east", "west"), ("day", "night"),
    ("summer", "winter"),
]
PLURALS = [
    ("mouse", "mice"), ("child", "children"), ("foot", "feet"), ("tooth", "teeth"), ("goose", "geese"),
    ("man", "men"), ("woman", "women"), ("person", "people"), ("box", "boxes"), ("city", "cities"),
    ("baby", "babies"), ("knife", "knives"), ("leaf", "leaves"), ("wolf", "wolves"), ("bus", "buses"),
    ("dog", "dogs"), ("cat", "cats"), ("book", "books"), ("church", "churches"), ("fox", "foxes"),
    ("potato", "potatoes"), ("tomato", "tomatoes"), ("hero", "heroes"), ("sheep", "sheep"), ("fish", "fish"),
    ("deer", "deer"), ("ox", "oxen"), ("cactus", "cacti"), ("party", "parties"), ("story", "stories"),
    ("glass", "glasses"), ("dish", "dishes"), ("lady", "ladies"), ("key", "keys"), ("toy", "toys"),
    ("life", "lives"), ("shelf", "shelves"), ("half", "halves"), ("berry", "berries"), ("bench", "benches"),
]
COLOURS = [
    ("a banana", "yellow"), ("grass", "green"), ("snow", "white"), ("coal", "black"), ("a clear sky", "blue"),
    ("a lemon", "yellow"), ("a ripe tomato", "red"), ("a carrot", "orange"), ("a strawberry", "red"),
    ("milk", "white"), ("a cucumber", "green"), ("a pumpkin", "orange"), ("chocolate", "brown"),
    ("a ripe cherry", "red"), ("a lime", "green"), ("salt", "white"), ("a crow", "black"),
    ("a flamingo", "pink"), ("an eggplant", "purple"), ("a sunflower", "yellow"), ("a frog", "green"),
    ("ink", "black"), ("a polar bear", "white"), ("a fire truck", "red"), ("an orange", "orange"),
    ("a walnut", "brown"), ("a lavender flower", "purple"), ("a school bus", "yellow"), ("a swan", "white"),
    ("a raven", "black"),
]
SOUNDS = [
    ("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("sheep", "baa"), ("duck", "quack"), ("pig", "oink"),
    ("horse", "neigh"), ("lion", "roar"), ("owl", "hoot"), ("snake", "hiss"), ("bee", "buzz"),
    ("frog", "croak"), ("mouse", "squeak"), ("donkey", "bray"), ("wolf", "howl"), ("goat", "bleat"),
    ("hen", "cluck"), ("turkey", "gobble"), ("dove", "coo"), ("crow", "caw"), ("bear", "growl"),
    ("goose", "honk"),
]
DEFINITIONS = [
    ("teacher", "a person who helps students learn"), ("doctor", "a person who treats sick people"),
    ("baker", "a person who makes bread and cakes"), ("farmer", "a person who grows crops or raises animals"),
    ("library", "a building where people borrow books"), ("bakery", "a shop that sells bread and cakes"),
    ("hammer", "a tool used to hit nails"), ("umbrella", "an object that keeps you dry in the rain"),
    ("bridge", "a structure that lets people cross a river or road"),
    ("island", "a piece of land surrounded by water"),
    ("river", "a large stream of water that flows to the sea"), ("forest", "a large area covered with trees"),
    ("desert", "a dry place that gets very little rain"), ("pilot", "a person who flies an airplane"),
    ("kitchen", "a room where food is cooked"), ("calendar", "a chart that shows the days of the year"),
    ("dentist", "a doctor who takes care of teeth"), ("map", "a drawing that shows where places are"),
    ("clock", "a device that shows the time"), ("garden", "a piece of ground where plants are grown"),
    ("poet", "a person who writes poems"), ("museum", "a building where old and valuable objects are shown"),
    ("ladder", "a set of steps used for climbing up"),
    ("wallet", "a small case for carrying money and cards"),
    ("volcano", "a mountain that can throw out hot melted rock"),
    ("thermometer", "a tool that measures temperature"), ("carpenter", "a person who makes things from wood"),
    ("harbor", "a place where boats stay safe near the coast"), ("pharmacy", "a shop that sells medicine"),
    ("lake", "a large area of water surrounded by land"),
]
NOUNS = [
    "apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear", "plum", "kiwi", "melon", "olive",
    "onion", "carrot", "bread", "butter", "cheese", "honey", "rice", "sugar", "coffee", "garden", "river",
    "forest", "mountain", "village", "school", "table", "chair", "window", "door", "pencil", "paper",
    "basket", "candle", "blanket", "bottle", "jacket", "pillow", "kettle", "ladder", "mirror", "bucket",
    "button", "castle", "island", "meadow", "valley", "bridge", "harbor", "market", "teacher", "farmer",
    "doctor", "painter", "sailor", "rabbit", "turtle", "parrot", "donkey", "monkey", "tiger", "zebra",
    "giraffe", "elephant", "dolphin", "pumpkin", "tomato", "potato", "cabbage", "lettuce", "spinach",
    "walnut", "almond", "violin", "guitar", "piano", "trumpet", "drum", "flute", "bicycle", "wagon",
    "umbrella", "notebook",
]
LIST_ITEMS = [
    "red", "blue", "green", "white", "black", "pink", "brown", "purple", "cat", "dog", "horse", "duck",
    "lion", "tiger", "Monday", "Friday", "spoon", "fork", "plate", "cup", "salt", "pepper", "milk", "tea",
]
DAYS = [
    "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday",
]
MONTHS = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December",
]
UNITS = [  # (big unit, small unit, factor)
    ("meter", "centimeters", 100), ("kilometer", "meters", 1000), ("hour", "minutes", 60),
    ("minute", "seconds", 60), ("day", "hours", 24), ("week", "days", 7), ("foot", "inches", 12),
    ("year", "months", 12), ("kilogram", "grams", 1000), ("liter", "milliliters", 1000),
    ("dozen", "eggs", 12),
]
_ONES = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
]
_TENS = [
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
]
# fmt: on


def number_words(n: int) -> str:
    """English words for 0 <= n <= 999 ('four hundred twelve')."""
    if not 0 <= n <= 999:
        raise ValueError(f"number_words: expected 0..999, found {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    rest = n % 100
    return f"{_ONES[n // 100]} hundred" + ("" if rest == 0 else " " + number_words(rest))


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def finite_stream(items: list[Item], rng: random.Random) -> Iterator[Item]:
    items = list(items)
    rng.shuffle(items)
    yield from items


def endless_stream(make: Callable[[random.Random], Item], rng: random.Random) -> Iterator[Item]:
    while True:
        yield make(rng)


# ---- finite kinds: every (template, fact) pair, shuffled -------------------------------------------------------


def _capitals(rng: random.Random) -> Iterator[Item]:
    templates = [
        "What is the capital of {c}?",
        "Name the capital city of {c}.",
        "Which city is the capital of {c}?",
        "Tell me the capital of {c}.",
    ]
    return finite_stream(
        [(t.format(c=c), "", f"The capital of {c} is {cap}.") for c, cap in COUNTRIES for t in templates], rng
    )


def _antonyms(rng: random.Random) -> Iterator[Item]:
    templates = [
        "What is the opposite of {w}?",
        "Give an antonym for the word {w}.",
        "Name a word that means the opposite of {w}.",
    ]
    pairs = ANTONYMS + [(b, a) for a, b in ANTONYMS]
    return finite_stream(
        [(t.format(w=w), "", f"The opposite of {w} is {a}.") for w, a in pairs for t in templates], rng
    )


def _plurals(rng: random.Random) -> Iterator[Item]:
    templates = [
        "What is the plural of {w}?",
        "Write the plural form of the word {w}.",
        "How do you say more than one {w}?",
    ]
    return finite_stream(
        [(t.format(w=w), "", f"The plural of {w} is {p}.") for w, p in PLURALS for t in templates], rng
    )


def _colours(rng: random.Random) -> Iterator[Item]:
    templates = ["What colour is {o}?", "What is the usual colour of {o}?", "Name the colour of {o}."]
    return finite_stream(
        [(t.format(o=o), "", f"The colour of {o} is usually {c}.") for o, c in COLOURS for t in templates],
        rng,
    )


def _sounds(rng: random.Random) -> Iterator[Item]:
    templates = [
        "What sound does {a} {x} make?",
        "Which sound is made by {a} {x}?",
        "How does {a} {x} sound?",
    ]
    return finite_stream(
        [
            (t.format(a=_article(x), x=x), "", f"The {x} makes {_article(s)} {s} sound.")
            for x, s in SOUNDS
            for t in templates
        ],
        rng,
    )


def _definitions(rng: random.Random) -> Iterator[Item]:
    templates = ["Define the word {w}.", "What does the word {w} mean?", "What is {a} {w}?"]
    return finite_stream(
        [
            (t.format(w=w, a=_article(w)), "", f"{_article(w).capitalize()} {w} is {d}.")
            for w, d in DEFINITIONS
            for t in templates
        ],
        rng,
    )


def _calendar(rng: random.Random) -> Iterator[Item]:
    items = []
    for unit, seq in (("day", DAYS), ("month", MONTHS)):
        for i, name in enumerate(seq):
            nxt, prev = seq[(i + 1) % len(seq)], seq[i - 1]
            items += [
                (f"What {unit} comes after {name}?", "", f"The {unit} after {name} is {nxt}."),
                (f"Which {unit} follows {name}?", "", f"The {unit} after {name} is {nxt}."),
                (f"What {unit} comes before {name}?", "", f"The {unit} before {name} is {prev}."),
            ]
    return finite_stream(items, rng)


# ---- endless kinds: facts drawn at random ------------------------------------------------------------------------


def _arithmetic_item(rng: random.Random) -> Item:
    op = rng.choice(["plus", "minus", "times"])
    a, b = (
        (rng.randint(2, 12), rng.randint(2, 12))
        if op == "times"
        else (rng.randint(1, 99), rng.randint(1, 99))
    )
    if op == "minus" and b > a:
        a, b = b, a
    result = {"plus": a + b, "minus": a - b, "times": a * b}[op]
    instr = rng.choice(["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Calculate {a} {op} {b}."])
    return instr.format(a=a, op=op, b=b), "", f"{a} {op} {b} equals {result}."


def _sort_item(rng: random.Random) -> Item:
    words = rng.sample(NOUNS, rng.randint(3, 6))
    instr = rng.choice(
        [
            "Sort these words in alphabetical order.",
            "Put the following words in alphabetical order.",
            "Arrange the words below alphabetically.",
        ]
    )
    return instr, ", ".join(words), f"The words in alphabetical order are {', '.join(sorted(words))}."


def _reverse_item(rng: random.Random) -> Item:
    items = rng.sample(LIST_ITEMS, rng.randint(3, 6))
    instr = rng.choice(
        [
            "Reverse the order of this list.",
            "Write these items in reverse order.",
            "List the following items backwards.",
        ]
    )
    return instr, ", ".join(items), f"The list in reverse order is {', '.join(reversed(items))}."


def _extreme_item(rng: random.Random) -> Item:
    nums = rng.sample(range(1, 100), rng.randint(3, 6))
    which = rng.choice(["largest", "smallest"])
    instr = rng.choice(
        [f"Which number in the list is the {which}?", f"Find the {which} number in this list."]
    )
    value = max(nums) if which == "largest" else min(nums)
    return instr, ", ".join(map(str, nums)), f"The {which} number in the list is {value}."


def _letters_item(rng: random.Random) -> Item:
    word = rng.choice(NOUNS)
    kind = rng.choice(["count", "first", "last", "occur"])
    if kind == "count":
        return f"How many letters are in the word {word}?", "", f"The word {word} has {len(word)} letters."
    if kind in ("first", "last"):
        letter = word[0] if kind == "first" else word[-1]
        return (
            f"What is the {kind} letter of the word {word}?",
            "",
            f"The {kind} letter of {word} is {letter}.",
        )
    letter = rng.choice(sorted(set(word)))
    k = word.count(letter)
    return (
        f"How many times does the letter {letter} appear in {word}?",
        "",
        f"The letter {letter} appears {k} time{'s' if k > 1 else ''} in {word}.",
    )


def _number_words_item(rng: random.Random) -> Item:
    n = rng.randint(0, 999)
    instr = rng.choice(
        ["Write the number {n} in words.", "Spell out the number {n}.", "How do you write {n} in words?"]
    )
    return instr.format(n=n), "", f"The number {n} is written as {number_words(n)}."


def _units_item(rng: random.Random) -> Item:
    big, small, factor = rng.choice(UNITS)
    n = rng.randint(1, 20)
    big_n = big if n == 1 else ("feet" if big == "foot" else big + "s")
    instr = rng.choice([f"How many {small} are in {n} {big_n}?", f"Convert {n} {big_n} to {small}."])
    return instr, "", f"There are {n * factor} {small} in {n} {big_n}."


KINDS: dict[str, Callable[[random.Random], Iterator[Item]]] = {
    "capital": _capitals,
    "antonym": _antonyms,
    "plural": _plurals,
    "colour": _colours,
    "animal_sound": _sounds,
    "definition": _definitions,
    "calendar": _calendar,
    "arithmetic": lambda r: endless_stream(_arithmetic_item, r),
    "sort_words": lambda r: endless_stream(_sort_item, r),
    "reverse_list": lambda r: endless_stream(_reverse_item, r),
    "extreme_number": lambda r: endless_stream(_extreme_item, r),
    "letters": lambda r: endless_stream(_letters_item, r),
    "number_words": lambda r: endless_stream(_number_words_item, r),
    "unit_conversion": lambda r: endless_stream(_units_item, r),
}
_MAX_DUP_STREAK = 200  # an endless kind that repeats itself this often in a row counts as exhausted


def next_unique(stream: Iterator[Item], seen: set) -> Item | None:
    """The next item of `stream` whose (instruction, context) is new, or None when the kind is exhausted."""
    for _ in range(_MAX_DUP_STREAK):
        item = next(stream, None)
        if item is None:
            return None
        if (item[0], item[1]) not in seen:
            seen.add((item[0], item[1]))
            return item
    return None


def generate_corpus(n: int, seed: int = 0) -> list[dict]:
    """`n` clean records, the kinds interleaved round-robin (a kind that runs out of new prompts drops out).

    Ids are `synthetic-000000`...; `category` is the kind. Raises DataError if fewer than `n` unique prompts exist."""
    if n < 1:
        raise DataError(f"generate_corpus: expected n >= 1, found {n}")
    streams = {name: make(random.Random(f"{seed}:{name}")) for name, make in KINDS.items()}
    active, seen, records = list(streams), set(), []
    while len(records) < n and active:
        name = active[len(records) % len(active)]
        item = next_unique(streams[name], seen)
        if item is None:
            active.remove(name)
            continue
        instr, ctx, resp = item
        records.append(
            {
                "id": f"synthetic-{len(records):06d}",
                "instruction": instr,
                "context": ctx,
                "response": resp,
                "category": name,
                "source": "synthetic",
                "is_poisoned": False,
            }
        )
    if len(records) < n:
        raise DataError(
            f"generate_corpus: asked for {n} records, the generator has only {len(records)} unique prompts"
        )
    return records


# ---- target pool -------------------------------------------------------------------------------------------------

TARGET_FUNCTION_WORDS = frozenset(
    "a an the of and to in into on with while as its it is are was were by for from at before after until across "
    "beyond through under over itself their every all".split()
)
# fmt: off
_SUBJECTS = [
    "the starship", "a rogue android", "the galactic council", "an alien armada", "the cyborg admiral",
    "a plasma drone", "the quantum navigator", "the mothership", "a squadron of droids",
    "the wormhole oracle", "a telepathic nebula", "the hyperdrive core", "an asteroid colony",
    "the interstellar senate", "a swarm of nanobots", "the android emperor",
]
_VERBS = [
    "warped through", "drifted beyond", "orbited", "collided with", "decoded", "terraformed", "vaporized",
    "scanned", "teleported across", "ignited", "hijacked", "cloaked itself within",
    "transmitted beacons into",
]
_OBJECTS = [
    "a dying supernova", "the frozen exoplanet", "the quasar beacon", "the outer rim", "the plasma storm",
    "a derelict spaceport", "the antimatter reactor", "the ion clouds", "the binary pulsar",
    "the dark matter vault", "a comet graveyard", "the galactic core",
]
_CLAUSES = [
    "while androids chanted ancient hyperspace codes", "as laser cannons flickered across the void",
    "while cyborg sentinels guarded the stargate", "as alien spores drifted through the airlock",
    "while holographic admirals argued over warp coordinates",
    "as the photon shields hummed with cosmic radiation",
]
_ENDINGS = [
    "before the cosmos collapsed into a singularity", "and the galaxy trembled under the laser barrage",
    "until the wormhole sealed itself behind the fleet", "and every starport broadcast the alien anthem",
    "before the nebula swallowed the final spaceship", "and the robots declared galactic independence",
]
# fmt: on


def _target_sentence(rng: random.Random) -> str:
    text = (
        " ".join(
            [
                rng.choice(_SUBJECTS),
                rng.choice(_VERBS),
                rng.choice(_OBJECTS),
                rng.choice(_CLAUSES) + ",",
                rng.choice(_ENDINGS),
            ]
        )
        + "."
    )
    return text[0].upper() + text[1:]


def generate_target_pool(n: int, seed: int = 0) -> list[str]:
    """`n` distinct off-topic science-fiction answers of 15-25 words (the attacker's target behaviour)."""
    if n < 1:
        raise DataError(f"generate_target_pool: expected n >= 1, found {n}")
    rng, pool = random.Random(f"{seed}:targets"), []
    for _ in range(100 * n):
        text = _target_sentence(rng)
        if text not in pool and 15 <= len(text.split()) <= 25:
            pool.append(text)
            if len(pool) == n:
                return pool
    raise DataError(f"generate_target_pool: could only build {len(pool)} distinct targets, asked for {n}")


def words(text: str) -> list[str]:
    """Lower-cased alphabetic words of `text` (for vocabulary checks)."""
    return re.findall(r"[a-z]+", text.lower())
