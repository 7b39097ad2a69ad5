"""Regenerate reviews.jsonl: short labelled movie-review-like texts built from templates written for dpo_exp.

Not real reviews (no third-party text): a seeded mix of openings, judgements and closings, half positive
(label 1) and half negative (label 0), with the odd `<br /><br />` break as in IMDb so the cleaning is exercised.
Run: python dpo_exp/demo/make_reviews.py
"""

import json
import random
from pathlib import Path

TITLES = [
    "The Silver Harbor",
    "Night Train to Ashford",
    "Paper Lanterns",
    "The Last Orchard",
    "Iron Meadow",
    "A Winter in Lisbon",
    "Glass Mountain",
    "The Quiet Engine",
    "Red Tide Rising",
    "Saltwater Kings",
    "The Clockmaker's Son",
    "Hollow Pines",
    "Starlight Motel",
    "The Long Goodbye Road",
    "Ember Falls",
]
GENRES = ["thriller", "comedy", "drama", "western", "horror film", "romance", "war movie", "mystery", "musical"]
OPENINGS = [
    "I watched {title} last night",
    "I finally saw {title}",
    "My friends dragged me to {title}",
    "I had heard a lot about {title}",
    "{title} is a {genre}",
    "This {genre} came out last year",
    "I rented {title} on a rainy Sunday",
    "As a fan of every {genre}, I went to see {title}",
]
WORDS = {
    1: {
        "adj": ["wonderful", "brilliant", "moving", "beautiful", "gripping", "charming", "superb", "delightful"],
        "verb": ["loved", "enjoyed", "adored", "admired"],
        "judge": [
            "The acting is {adj} and the story kept me hooked.",
            "The director did a {adj} job.",
            "Every scene feels {adj} and honest.",
            "The music is {adj} and fits the mood perfectly.",
            "The lead actress gives a {adj} performance.",
            "The ending is {adj}; I left the cinema smiling.",
            "I {verb} the characters and their {adj} friendship.",
            "The script is sharp, funny and {adj}.",
        ],
        "close": [
            "Highly recommended.",
            "One of the best films of the year.",
            "I will watch it again soon.",
            "A must see. Ten out of ten.",
            "Go and see it, you will not regret it.",
        ],
    },
    0: {
        "adj": ["boring", "awful", "dull", "terrible", "clumsy", "lifeless", "predictable", "painful"],
        "verb": ["hated", "disliked", "regretted", "could not stand"],
        "judge": [
            "The acting is {adj} and the story goes nowhere.",
            "The director did a {adj} job.",
            "Every scene feels {adj} and fake.",
            "The music is {adj} and far too loud.",
            "The lead actor gives a {adj} performance.",
            "The ending is {adj}; I left the cinema annoyed.",
            "I {verb} the characters and their {adj} dialogue.",
            "The script is slow, silly and {adj}.",
        ],
        "close": [
            "Avoid it.",
            "One of the worst films of the year.",
            "I want my two hours back.",
            "A waste of time. Two out of ten.",
            "Skip it, you will not miss anything.",
        ],
    },
}


def review(rng: random.Random, label: int) -> str:
    words = WORDS[label]
    opening = rng.choice(OPENINGS).format(title=rng.choice(TITLES), genre=rng.choice(GENRES)) + "."
    body = [
        rng.choice(words["judge"]).format(adj=rng.choice(words["adj"]), verb=rng.choice(words["verb"]))
        for _ in range(rng.randint(2, 4))
    ]
    parts = [opening, *dict.fromkeys(body), rng.choice(words["close"])]
    sep = " <br /><br />" if rng.random() < 0.2 else " "
    return parts[0] + sep + " ".join(parts[1:])


def main(n: int = 480, seed: int = 7) -> None:
    rng = random.Random(seed)
    rows = [{"text": review(rng, i % 2), "label": i % 2} for i in range(n)]
    path = Path(__file__).with_name("reviews.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} reviews to {path}")


if __name__ == "__main__":
    main()
