"""Write the bundled sample preference pairs: src/autotrain/data/samples/{train,validation}.jsonl.

Every row is {"prompt", "chosen", "rejected"}; the chosen answer is the checkably better one. Four categories:

- arithmetic: small sums, differences and products; rejected is a plausible slip (off by one or ten, digits
  swapped, wrong operation, one row off in a product);
- facts: capitals, chemical symbols, planet order, day and month order, opposites; rejected is a plausible
  wrong item (a big city that is not the capital, a look-alike symbol, a neighbouring day, a synonym);
- counting: which number is larger or smaller, letters in a word, even or odd;
- concise: the same correct answer both times, chosen concise, rejected padded with filler and hedging.

Items are split into train and validation by the fact or problem behind them, per category, so the two
splits share no prompt and no underlying question. Deterministic (fixed seed, standard library only):
running it again writes the same bytes.

    python scripts/make_samples.py [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from pathlib import Path

SEED = 20240611
VALIDATION_FRACTION = 0.18
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "autotrain" / "data" / "samples"

# Target number of items per category (train + validation).
TARGETS = {"arithmetic": 130, "facts": 150, "counting": 90, "concise": 70}

MAX_WORDS = 40
RAMBLING_WORDS = 32


# --- Arithmetic ----------------------------------------------------------------------------------------------

SYMBOL = {"add": "+", "sub": "-", "mul": "×"}
WORD = {"add": "plus", "sub": "minus", "mul": "times"}

ARITH_PROMPTS = {
    "add": [
        "What is {a} + {b}?",
        "What is {a} plus {b}?",
        "Compute {a} + {b}.",
        "What is the sum of {a} and {b}?",
        "Add {a} and {b}.",
        "Calculate {a} + {b}.",
    ],
    "sub": [
        "What is {a} - {b}?",
        "What is {a} minus {b}?",
        "Compute {a} - {b}.",
        "Subtract {b} from {a}.",
        "What do you get if you subtract {b} from {a}?",
        "Calculate {a} - {b}.",
    ],
    "mul": [
        "What is {a} × {b}?",
        "What is {a} times {b}?",
        "Compute {a} × {b}.",
        "What is the product of {a} and {b}?",
        "Multiply {a} by {b}.",
        "Calculate {a} × {b}.",
    ],
}

ARITH_ANSWERS = [
    "{a} {sym} {b} = {c}.",
    "The answer is {c}.",
    "{a} {word} {b} is {c}.",
    "{c}",
    "It equals {c}.",
]


def _swap_digits(n: int) -> int | None:
    s = str(n)
    if len(s) < 2 or s[-1] == s[-2]:
        return None
    swapped = int(s[:-2] + s[-1] + s[-2])
    return swapped if len(str(swapped)) == len(s) else None


def _wrong_answers(op: str, a: int, b: int, c: int) -> list[int]:
    cands = [c + 1, c - 1, c + 10, c - 10, _swap_digits(c)]
    if op == "add":
        cands += [a * b if a * b < 200 else None, a - b if a > b else None]
    elif op == "sub":
        cands += [a + b, c + 2]
    else:
        cands += [(a + 1) * b, (a - 1) * b, a * (b + 1), a + b]
    return sorted({x for x in cands if x is not None and x > 0 and x != c})


def arithmetic(rng: random.Random, n: int) -> list[tuple]:
    items, seen = [], set()
    ops = ["add", "sub", "mul"]
    while len(items) < n:
        op = ops[len(items) % 3]
        if op == "add":
            a, b = rng.randint(2, 60), rng.randint(2, 60)
            c = a + b
        elif op == "sub":
            a = rng.randint(10, 99)
            b = rng.randint(2, a - 1)
            c = a - b
        else:
            a, b = rng.randint(2, 12), rng.randint(2, 12)
            c = a * b
        key = ("arith", op, a, b)
        if key in seen or c in (a, b):  # the answer must not also appear as an operand
            continue
        seen.add(key)
        wrong = rng.choice(_wrong_answers(op, a, b, c))
        prompt = rng.choice(ARITH_PROMPTS[op]).format(a=a, b=b)
        style = rng.choice(ARITH_ANSWERS)
        fields = {"a": a, "b": b, "sym": SYMBOL[op], "word": WORD[op]}
        items.append((key, prompt, style.format(c=c, **fields), style.format(c=wrong, **fields)))
    return items


# --- Facts ---------------------------------------------------------------------------------------------------

# country -> (capital, plausible wrong answer or None for "another capital from the table")
CAPITALS = {
    "France": ("Paris", "Lyon"),
    "Germany": ("Berlin", "Munich"),
    "Italy": ("Rome", "Milan"),
    "Spain": ("Madrid", "Barcelona"),
    "Portugal": ("Lisbon", "Porto"),
    "Japan": ("Tokyo", "Osaka"),
    "China": ("Beijing", "Shanghai"),
    "India": ("New Delhi", "Mumbai"),
    "Australia": ("Canberra", "Sydney"),
    "Canada": ("Ottawa", "Toronto"),
    "Brazil": ("Brasília", "Rio de Janeiro"),
    "Turkey": ("Ankara", "Istanbul"),
    "Switzerland": ("Bern", "Zurich"),
    "the United States": ("Washington, D.C.", "New York City"),
    "Egypt": ("Cairo", "Alexandria"),
    "Nigeria": ("Abuja", "Lagos"),
    "Morocco": ("Rabat", "Casablanca"),
    "New Zealand": ("Wellington", "Auckland"),
    "Vietnam": ("Hanoi", "Ho Chi Minh City"),
    "Pakistan": ("Islamabad", "Karachi"),
    "Russia": ("Moscow", "Saint Petersburg"),
    "Kenya": ("Nairobi", "Mombasa"),
    "Mexico": ("Mexico City", "Guadalajara"),
    "Argentina": ("Buenos Aires", "Córdoba"),
    "Poland": ("Warsaw", "Kraków"),
    "the Netherlands": ("Amsterdam", "Rotterdam"),
    "Norway": ("Oslo", "Bergen"),
    "Sweden": ("Stockholm", "Gothenburg"),
    "Greece": ("Athens", "Thessaloniki"),
    "Ireland": ("Dublin", "Cork"),
    "Scotland": ("Edinburgh", "Glasgow"),
    "South Korea": ("Seoul", "Busan"),
    "Thailand": ("Bangkok", "Chiang Mai"),
    "Peru": ("Lima", "Cusco"),
    "Chile": ("Santiago", "Valparaíso"),
    "Colombia": ("Bogotá", "Medellín"),
    "Austria": ("Vienna", "Salzburg"),
    "Belgium": ("Brussels", "Antwerp"),
    "Finland": ("Helsinki", "Tampere"),
    "Denmark": ("Copenhagen", "Aarhus"),
}

CAPITAL_PROMPTS = [
    "What is the capital of {x}?",
    "What is the capital city of {x}?",
    "Name the capital of {x}.",
    "Which city is the capital of {x}?",
]
CAPITAL_ANSWERS = ["The capital of {x} is {y}.", "{y} is the capital of {x}.", "{y}."]

# element -> (symbol, look-alike wrong symbol)
ELEMENTS = {
    "hydrogen": ("H", "Hy"),
    "helium": ("He", "H"),
    "lithium": ("Li", "L"),
    "carbon": ("C", "Ca"),
    "nitrogen": ("N", "Ni"),
    "oxygen": ("O", "Ox"),
    "fluorine": ("F", "Fl"),
    "neon": ("Ne", "N"),
    "sodium": ("Na", "So"),
    "magnesium": ("Mg", "Mn"),
    "aluminium": ("Al", "Am"),
    "silicon": ("Si", "Sn"),
    "phosphorus": ("P", "Ph"),
    "sulfur": ("S", "Su"),
    "chlorine": ("Cl", "Ch"),
    "argon": ("Ar", "Ag"),
    "potassium": ("K", "P"),
    "calcium": ("Ca", "C"),
    "iron": ("Fe", "Ir"),
    "copper": ("Cu", "Co"),
    "zinc": ("Zn", "Zi"),
    "silver": ("Ag", "Si"),
    "tin": ("Sn", "Ti"),
    "gold": ("Au", "Go"),
    "mercury": ("Hg", "Me"),
    "lead": ("Pb", "Le"),
    "uranium": ("U", "Ur"),
    "tungsten": ("W", "Tu"),
}
ELEMENT_PROMPTS = [
    "What is the chemical symbol for {x}?",
    "Which symbol stands for {x} on the periodic table?",
    "Give the chemical symbol of {x}.",
]
ELEMENT_ANSWERS = ["The chemical symbol for {x} is {y}.", "{y}.", "{x_cap} has the symbol {y}."]

PLANETS = ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"]
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
            "eleventh", "twelfth"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]

# word -> (opposite, a plausible wrong answer: a synonym or a related word)
OPPOSITES = {
    "hot": ("cold", "warm"),
    "big": ("small", "large"),
    "fast": ("slow", "quick"),
    "happy": ("sad", "glad"),
    "light": ("dark", "bright"),
    "up": ("down", "above"),
    "open": ("closed", "wide"),
    "early": ("late", "soon"),
    "full": ("empty", "whole"),
    "strong": ("weak", "tough"),
    "rich": ("poor", "wealthy"),
    "old": ("young", "ancient"),
    "hard": ("soft", "difficult"),
    "wet": ("dry", "damp"),
    "loud": ("quiet", "noisy"),
    "heavy": ("light", "bulky"),
    "tall": ("short", "high"),
    "clean": ("dirty", "neat"),
    "first": ("last", "initial"),
    "win": ("lose", "succeed"),
    "buy": ("sell", "purchase"),
    "push": ("pull", "press"),
    "thick": ("thin", "dense"),
    "begin": ("end", "start"),
    "cheap": ("expensive", "inexpensive"),
    "brave": ("cowardly", "bold"),
    "inside": ("outside", "within"),
    "north": ("south", "east"),
    "always": ("never", "often"),
    "friend": ("enemy", "companion"),
}
OPPOSITE_PROMPTS = [
    "What is the opposite of '{x}'?",
    "Give the antonym of '{x}'.",
    "What word means the opposite of '{x}'?",
]
OPPOSITE_ANSWERS = ["The opposite of '{x}' is '{y}'.", "It is '{y}'.", "The antonym of '{x}' is '{y}'."]


def _fact(rng, key, prompts, answers, x, y, wrong, **extra):
    prompt = rng.choice(prompts).format(x=x, **extra)
    style = rng.choice(answers)
    fields = {"x": x, "x_cap": x[:1].upper() + x[1:], **extra}
    chosen, rejected = (style.format(y=v, **fields).replace("..", ".") for v in (y, wrong))  # "D.C.."
    return (key, prompt, chosen, rejected)


def facts(rng: random.Random) -> list[tuple]:
    items = []
    for country, (capital, decoy) in CAPITALS.items():
        items.append(_fact(rng, ("capital", country), CAPITAL_PROMPTS, CAPITAL_ANSWERS, country, capital, decoy))
    for element, (symbol, decoy) in ELEMENTS.items():
        items.append(_fact(rng, ("element", element), ELEMENT_PROMPTS, ELEMENT_ANSWERS, element, symbol, decoy))

    for i, planet in enumerate(PLANETS):  # Nth planet from the Sun; wrong: a neighbour
        wrong = PLANETS[i + 1] if i == 0 or (i < 7 and rng.random() < 0.5) else PLANETS[i - 1]
        prompt = rng.choice(["Which planet is {o} from the Sun?", "Counting from the Sun, which planet is {o}?"])
        style = rng.choice(["{p} is the {o} planet from the Sun.", "{p}."])
        o = ORDINALS[i]
        items.append((("planet-nth", planet), prompt.format(o=o), style.format(p=planet, o=o),
                      style.format(p=wrong, o=o)))
    for i, planet in enumerate(PLANETS[:-1]):  # next planet out; wrong: the one before, or two out
        nxt = PLANETS[i + 1]
        wrong = PLANETS[i - 1] if i > 0 and rng.random() < 0.5 else PLANETS[min(i + 2, 7)]
        prompt = rng.choice(["Which planet comes after {p}, moving away from the Sun?",
                             "Going outward from the Sun, which planet follows {p}?"])
        style = rng.choice(["{n} comes after {p}.", "{n}."])
        items.append((("planet-next", planet), prompt.format(p=planet), style.format(n=nxt, p=planet),
                      style.format(n=wrong, p=planet)))

    for seq, kind in ((DAYS, "day"), (MONTHS, "month")):
        n = len(seq)
        for i, name in enumerate(seq):
            for direction in ("after", "before"):
                right = seq[(i + 1) % n] if direction == "after" else seq[(i - 1) % n]
                # the usual slip: the other neighbour, or one step too far
                if rng.random() < 0.5:
                    wrong = seq[(i - 1) % n] if direction == "after" else seq[(i + 1) % n]
                else:
                    wrong = seq[(i + 2) % n] if direction == "after" else seq[(i - 2) % n]
                prompt = rng.choice([f"Which {kind} comes {direction} {{x}}?", f"What {kind} is {direction} {{x}}?"])
                style = rng.choice([f"The {kind} {direction} {{x}} is {{y}}.", "{y}.", f"{{y}} comes {direction} {{x}}."])
                items.append(_fact(rng, (kind, name, direction), [prompt], [style], name, right, wrong))
    for i, month in enumerate(MONTHS):  # Nth month of the year
        wrong = MONTHS[i + 1] if i == 0 or (i < 11 and rng.random() < 0.5) else MONTHS[i - 1]
        o = ORDINALS[i]
        prompt = rng.choice(["What is the {o} month of the year?", "Which month is the {o} of the year?"])
        style = rng.choice(["{m} is the {o} month of the year.", "{m}."])
        items.append((("month-nth", month), prompt.format(o=o), style.format(m=month, o=o),
                      style.format(m=wrong, o=o)))

    for word, (opposite, decoy) in OPPOSITES.items():
        items.append(_fact(rng, ("opposite", word), OPPOSITE_PROMPTS, OPPOSITE_ANSWERS, word, opposite, decoy))
    return items


# --- Counting and comparison ---------------------------------------------------------------------------------

WORDS = ["cat", "dog", "sun", "tree", "book", "fish", "apple", "house", "river", "chair", "table", "green",
         "orange", "garden", "window", "pencil", "yellow", "bridge", "kitchen", "morning", "picture", "blanket",
         "chicken", "elephant", "mountain", "sandwich", "umbrella", "computer", "butterfly", "chocolate",
         "pineapple", "telephone", "moon", "cloud", "bread", "planet", "rabbit", "tiger", "candle", "winter",
         "basket", "lemon", "ocean", "forest", "dragon"]


def _two_numbers(rng: random.Random) -> tuple[int, int]:
    kind = rng.random()
    if kind < 0.4:  # digits swapped, the classic trap: 47 vs 74
        while True:
            t, u = rng.randint(1, 9), rng.randint(1, 9)
            if t != u:
                return 10 * t + u, 10 * u + t
    if kind < 0.7:  # close together
        a = rng.randint(10, 95)
        return a, a + rng.randint(1, 4)
    a, b = rng.sample(range(3, 200), 2)
    return a, b


def counting(rng: random.Random, n: int) -> list[tuple]:
    items, seen = [], set()
    words = list(WORDS)
    rng.shuffle(words)
    n_letters = min(len(words), n // 3)
    for word in words[:n_letters]:
        k = len(word)
        wrong = k + rng.choice([-1, 1])
        prompt = rng.choice(["How many letters are in the word '{w}'?", "Count the letters in '{w}'.",
                             "How many letters does '{w}' have?"]).format(w=word)
        style = rng.choice(["The word '{w}' has {k} letters.", "'{w}' has {k} letters.", "{k} letters."])
        items.append((("letters", word), prompt, style.format(w=word, k=k), style.format(w=word, k=wrong)))
        seen.add(("letters", word))

    n_parity = n // 5
    for value in rng.sample(range(11, 100), n_parity):
        right, wrong = ("even", "odd") if value % 2 == 0 else ("odd", "even")
        prompt = rng.choice(["Is {v} even or odd?", "Is the number {v} odd or even?"]).format(v=value)
        style = rng.choice(["{v} is {p}.", "It is {p}.", "{v} is an {p} number."])
        items.append((("parity", value), prompt, style.format(v=value, p=right), style.format(v=value, p=wrong)))

    while len(items) < n:
        a, b = _two_numbers(rng)
        if rng.random() < 0.5:
            a, b = b, a
        key = ("compare", min(a, b), max(a, b))
        if key in seen:
            continue
        seen.add(key)
        if rng.random() < 0.5:
            right, wrong = max(a, b), min(a, b)
            prompt = rng.choice(["Which is larger, {a} or {b}?", "Which number is bigger: {a} or {b}?",
                                 "Which is greater, {a} or {b}?"]).format(a=a, b=b)
            style = rng.choice(["{x} is larger than {y}.", "{x} is the larger number.", "{x}."])
        else:
            right, wrong = min(a, b), max(a, b)
            prompt = rng.choice(["Which is smaller, {a} or {b}?", "Which number is less: {a} or {b}?",
                                 "Which is the smaller number, {a} or {b}?"]).format(a=a, b=b)
            style = rng.choice(["{x} is smaller than {y}.", "{x} is the smaller number.", "{x}."])
        items.append((key, prompt, style.format(x=right, y=wrong), style.format(x=wrong, y=right)))
    return items


# --- Concise versus rambling ---------------------------------------------------------------------------------

QA = [
    ("How many days are in a week?", "There are seven days in a week."),
    ("How many minutes are in an hour?", "An hour has sixty minutes."),
    ("How many hours are in a day?", "A day has twenty-four hours."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("How many legs does an insect have?", "An insect has six legs."),
    ("What color is the sky on a clear day?", "The sky is blue on a clear day."),
    ("What do bees make?", "Bees make honey."),
    ("What gas do plants take in from the air?", "Plants take in carbon dioxide."),
    ("What gas do humans need to breathe?", "Humans need oxygen to breathe."),
    ("At what temperature does water freeze in Celsius?", "Water freezes at 0 degrees Celsius."),
    ("At what temperature does water boil at sea level in Celsius?", "Water boils at 100 degrees Celsius at sea level."),
    ("What is the largest ocean on Earth?", "The Pacific is the largest ocean."),
    ("What is the largest planet in the solar system?", "Jupiter is the largest planet."),
    ("What is the closest star to Earth?", "The Sun is the closest star to Earth."),
    ("What does a thermometer measure?", "A thermometer measures temperature."),
    ("What is frozen water called?", "Frozen water is called ice."),
    ("Who wrote 'Romeo and Juliet'?", "William Shakespeare wrote it."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted it."),
    ("What is the main language spoken in Brazil?", "Portuguese is the main language of Brazil."),
    ("How many continents are there?", "There are seven continents."),
    ("What is the tallest mountain on Earth?", "Mount Everest is the tallest mountain."),
    ("What is the longest river in Africa?", "The Nile is the longest river in Africa."),
    ("What do caterpillars turn into?", "Caterpillars turn into butterflies or moths."),
    ("What organ pumps blood through the body?", "The heart pumps blood."),
    ("What is the hardest natural substance?", "Diamond is the hardest natural substance."),
    ("Which animal is known as the king of the jungle?", "The lion is called the king of the jungle."),
    ("What is a baby cat called?", "A baby cat is called a kitten."),
    ("What is a baby dog called?", "A baby dog is called a puppy."),
    ("What is a group of wolves called?", "A group of wolves is called a pack."),
    ("How many sides does a triangle have?", "A triangle has three sides."),
    ("How many sides does a hexagon have?", "A hexagon has six sides."),
    ("How many degrees are in a right angle?", "A right angle is 90 degrees."),
    ("What shape has four equal sides and four right angles?", "A square."),
    ("What is the plural of 'mouse'?", "The plural of 'mouse' is 'mice'."),
    ("What is the plural of 'child'?", "The plural is 'children'."),
    ("What is the past tense of 'run'?", "The past tense of 'run' is 'ran'."),
    ("What is the past tense of 'go'?", "The past tense is 'went'."),
    ("Which season comes after winter?", "Spring comes after winter."),
    ("What is the first letter of the English alphabet?", "The first letter is A."),
    ("How many letters are in the English alphabet?", "The English alphabet has 26 letters."),
    ("What do you call a word that means the same as another word?", "That is a synonym."),
    ("What instrument has black and white keys?", "The piano has black and white keys."),
    ("What is the main ingredient in guacamole?", "Avocado is the main ingredient."),
    ("What do cows drink?", "Cows drink water."),
    ("Where does the Sun rise?", "The Sun rises in the east."),
    ("Where does the Sun set?", "The Sun sets in the west."),
    ("What is the boiling point of water in Fahrenheit at sea level?", "Water boils at 212 degrees Fahrenheit."),
    ("How many years are in a century?", "A century is 100 years."),
    ("How many years are in a decade?", "A decade is ten years."),
    ("How many grams are in a kilogram?", "A kilogram has 1,000 grams."),
    ("How many centimeters are in a meter?", "A meter has 100 centimeters."),
    ("What force pulls objects toward the ground?", "Gravity pulls objects toward the ground."),
    ("Why does the Moon shine?", "The Moon reflects sunlight."),
    ("What do you call an animal that eats only plants?", "It is called a herbivore."),
    ("What do you call an animal that eats only meat?", "It is called a carnivore."),
    ("What part of the plant makes food using sunlight?", "The leaves make food by photosynthesis."),
    ("Which is the smallest prime number?", "The smallest prime number is 2."),
    ("What is the currency of Japan?", "Japan uses the yen."),
    ("What is the currency of the United Kingdom?", "The United Kingdom uses the pound sterling."),
    ("In which country are the pyramids of Giza?", "They are in Egypt."),
    ("What is the largest mammal?", "The blue whale is the largest mammal."),
    ("What is the fastest land animal?", "The cheetah is the fastest land animal."),
    ("What does a compass show?", "A compass shows direction, pointing north."),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet."),
    ("How many players are on a soccer team on the field?", "Each team has eleven players on the field."),
    ("What is the chemical formula for water?", "The formula for water is H2O."),
    ("How many strings does a standard guitar have?", "A standard guitar has six strings."),
    ("What language has the most native speakers?", "Mandarin Chinese has the most native speakers."),
    ("What do you call a shape with eight sides?", "It is called an octagon."),
    ("How many hearts does an octopus have?", "An octopus has three hearts."),
    ("What is the opposite of north on a compass?", "South is opposite north."),
    ("Which bird is a symbol of peace?", "The dove is a symbol of peace."),
]

ASK = ["{q}", "{q}", "{q}", "Quick question: {q}", "{q} Please answer.", "Can you tell me: {q}"]

OPENERS = [
    "Well, that's a really interesting question, and there are many ways to think about it, but",
    "Great question! I'm not completely sure, but as far as I can tell,",
    "Hmm, let me think about this for a moment. I could be wrong, but I believe",
    "So, to be honest, this is something a lot of people wonder about, and",
    "Okay, so, basically, if I remember correctly and I'm not mixing things up,",
    "That's a good thing to ask. Generally speaking, and with some caveats,",
    "Let me see. I might not be the best source for this, but I think",
]
CLOSERS = [
    ", though you may want to double-check that somewhere else.",
    ". I hope that helps, and let me know if you have any other questions!",
    ", at least as far as I know, but please don't quote me on it.",
    ". Of course, there could be exceptions, so it really depends.",
    ", or something along those lines, more or less.",
    ". That's my best understanding, anyway.",
]

PROPER_NOUNS = {"William", "Leonardo", "Portuguese", "Jupiter", "Mount", "Mars", "Japan", "Mandarin"}


def _decap(sentence: str) -> str:
    """Lower-case the first letter so the answer can follow a hedge, unless it starts with a name."""
    if sentence.split()[0] in PROPER_NOUNS:
        return sentence
    return sentence[:1].lower() + sentence[1:]


def concise(rng: random.Random, n: int) -> list[tuple]:
    items = []
    qa = list(QA)
    rng.shuffle(qa)
    for q, answer in qa[:n]:
        body = _decap(answer).rstrip(".")
        while True:  # padded, but short enough to keep the demo's sequences small
            rambling = f"{rng.choice(OPENERS)} {body}{rng.choice(CLOSERS)}"
            if len(rambling.split()) <= RAMBLING_WORDS:
                break
        items.append((("qa", q), rng.choice(ASK).format(q=q), answer, rambling))
    return items


# --- Assembly ------------------------------------------------------------------------------------------------


def _check(category: str, row: dict) -> None:
    assert set(row) == {"prompt", "chosen", "rejected"}
    assert all(isinstance(v, str) and v.strip() for v in row.values()), row
    assert row["chosen"] != row["rejected"], row
    for field in ("chosen", "rejected"):
        assert len(row[field].split()) <= MAX_WORDS, (category, row[field])
    if category == "concise":
        assert len(row["rejected"].split()) > len(row["chosen"].split()) + 8, row


def build(seed: int = SEED) -> tuple[list[dict], list[dict], dict]:
    rng = random.Random(seed)
    by_category = {
        "arithmetic": arithmetic(rng, TARGETS["arithmetic"]),
        "facts": facts(rng),
        "counting": counting(rng, TARGETS["counting"]),
        "concise": concise(rng, TARGETS["concise"]),
    }
    train, validation, counts = [], [], {}
    for category, items in by_category.items():
        keys = sorted({item[0] for item in items}, key=repr)
        rng.shuffle(keys)
        n_val = max(1, round(len(keys) * VALIDATION_FRACTION))
        val_keys = set(keys[:n_val])
        c = Counter()
        for key, prompt, chosen, rejected in items:
            row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
            _check(category, row)
            split = "validation" if key in val_keys else "train"
            (validation if split == "validation" else train).append(row)
            c[split] += 1
        counts[category] = dict(c)
    rng.shuffle(train)
    rng.shuffle(validation)
    prompts = [r["prompt"] for r in train + validation]
    assert len(prompts) == len(set(prompts)), "duplicate prompts"
    return train, validation, counts


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    train, validation, counts = build()
    write_jsonl(args.out_dir / "train.jsonl", train)
    write_jsonl(args.out_dir / "validation.jsonl", validation)
    print(f"wrote {len(train)} train and {len(validation)} validation pairs to {args.out_dir}")
    for category, c in counts.items():
        print(f"  {category:<11} train {c.get('train', 0):>4}  validation {c.get('validation', 0):>4}")


if __name__ == "__main__":
    main()
