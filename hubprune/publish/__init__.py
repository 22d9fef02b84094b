"""Publishing a family: model cards (README.md and plots) for every member and the family, and the push of
each member to its own Hub repo, gathered in a collection.

cards.py renders the cards, push.py publishes them; the modules beside them hold what the cards are made of
(results, formatting, licence and metadata, card context, plots).
"""

from hubprune.publish.cards import CardOutcome, CardSettings, render_cards
from hubprune.publish.push import PushOutcome, PushSettings, push_family

__all__ = ["CardOutcome", "CardSettings", "PushOutcome", "PushSettings", "push_family", "render_cards"]
