"""Speed of the page simplifier, and tokens per page before and after it.

Two kinds of page:

a) the MiniWoB DOMs of ../shared/data/miniwob (every state of the first ``--sessions`` sessions
   that has an event); "before" is the DOM as compact JSON, the form it is recorded in;
b) a generated shop page of a few hundred KB, built like a real one (inline scripts and state
   blobs, styles, a nested-``div`` mega menu, a search form, a product grid with images, prices,
   ratings and buttons, hidden modals, a footer of link lists); "before" is its HTML.

Reports pages per second of `simplify_dom` / `simplify_html` (parsing included, file reading
not), the tokens (`rationale.tokens`) of a page before and after, and the time of `cut_page` to
``--budget`` tokens. Run:

    .venv/bin/python benchmarks/pages.py [--sessions 50] [--products 240] [--budget 8000]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import statistics
import time
from pathlib import Path

from rationale.pages import cut_page, simplify_dom, simplify_html
from rationale.tokens import count_tokens, tokenizer_info

MINIWOB = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "miniwob"

VOCABULARY = (
    "soft cotton blend relaxed fit classic crew neck everyday wear machine washable breathable "
    "lightweight durable stretch organic premium slim tailored casual outdoor travel pocket "
    "zip hood water resistant recycled warm layer essential modern vintage wash"
)


def shop_page(products: int, seed: int = 7) -> str:
    """A realistic product-listing page (deterministic for a seed)."""
    rnd = random.Random(seed)
    vocabulary = VOCABULARY.split()

    def words(n: int) -> str:
        return " ".join(rnd.choice(vocabulary) for _ in range(n))

    state = json.dumps(
        {"products": [{"id": i, "sku": f"SKU{i:06d}", "tags": words(12)} for i in range(products)]}
    )
    css = "".join(
        f".c{i}{{margin:{i % 7}px;padding:{i % 5}px;color:#{i * 9973 % 0xFFFFFF:06x}}}"
        for i in range(1500)
    )
    menu = "".join(
        f'<div class="mega-col"><div class="mega-head"><a href="/c/{c}">Category {c}</a></div>'
        + "".join(
            f'<div class="mega-item"><div><a href="/c/{c}/{s}" class="nav-link">'
            f"<span>{words(2).title()}</span></a></div></div>"
            for s in range(12)
        )
        + "</div>"
        for c in range(10)
    )
    cards = []
    for i in range(products):
        stars = "".join('<svg class="star"><path d="M1 1L2 2"/></svg>' for _ in range(5))
        cards.append(
            f'<div class="col" data-index="{i}"><div class="card" data-sku="SKU{i:06d}">'
            f'<div class="img-wrap"><a href="/p/{i}"><img src="/img/{i}.jpg" '
            f'srcset="/img/{i}@2x.jpg 2x, /img/{i}@3x.jpg 3x" alt="{words(3)}"></a></div>'
            f'<div class="body"><div class="title"><h3><a href="/p/{i}">{words(4).title()}</a>'
            f'</h3></div><div class="rating" aria-label="{rnd.randint(30, 50) / 10} stars">'
            f"{stars}<span>({rnd.randint(1, 900)})</span></div>"
            f'<div class="price"><span class="cur">$</span><span>{rnd.randint(5, 200)}.99</span>'
            f'</div><p class="desc">{words(40)}</p>'
            f'<div class="actions"><button class="btn add" data-id="{i}">Add to cart</button>'
            f'<button class="btn fav" aria-label="Save to wishlist"><svg><path d="M0"/></svg>'
            f'</button></div></div><div class="tooltip" style="display:none">{words(30)}</div>'
            f"</div></div>"
        )
    footer = "".join(
        f"<div class='footer-col'><h4>{words(2).title()}</h4><ul>"
        + "".join(f"<li><a href='/f/{c}/{k}'>{words(2).title()}</a></li>" for k in range(8))
        + "</ul></div>"
        for c in range(6)
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Shop</title>"
        f"<style>{css}</style>"
        f"<script>window.__STATE__ = {state};</script>"
        "<script src='/bundle.js'></script></head><body><div id='app'><div class='layout'>"
        "<header class='site-header'><div class='inner'><a href='/' class='logo'>"
        "<img src='/logo.svg' alt='Shop home'></a>"
        "<form role='search' action='/s'><input type='search' name='q' placeholder='Search'>"
        "<button type='submit'>Search</button></form></div>"
        f"<nav aria-label='Categories'><div class='mega'>{menu}</div></nav></header>"
        "<main><div class='filters'><form id='filters'>"
        + "".join(
            f"<label><input type='checkbox' name='f{k}'> {words(2)}</label>" for k in range(20)
        )
        + "<select name='sort'><option>Featured</option><option>Price: low to high</option>"
        "<option>Newest</option></select></form></div>"
        f"<section aria-label='Results'><div class='grid'>{''.join(cards)}</div></section>"
        "<div class='pager'><a href='?p=2'>Next page</a></div></main>"
        "<div class='modal' hidden><div class='modal-body'><h2>Sign in</h2>"
        "<input type='email'><button>Continue</button></div></div>"
        f"<footer>{footer}<p>&copy; 2026 Shop</p></footer></div></div>"
        "<img src='/pixel.gif' width='1' height='1' style='display:none'>"
        "<script>(function(){var t=1;})();</script></body></html>"
    )


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.1f}" if seconds else "inf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sessions", type=int, default=50, help="MiniWoB sessions to read")
    parser.add_argument("--products", type=int, default=240, help="product cards on the big page")
    parser.add_argument("--repeat", type=int, default=5, help="simplifications of the big page")
    parser.add_argument("--budget", type=int, default=8000, help="cut_page budget, tokens")
    args = parser.parse_args()
    rows = []
    print(f"tokens: {tokenizer_info()['name']}")

    files = sorted(MINIWOB.glob("*/*/*.json.gz"))[: args.sessions]
    if files:
        doms = []
        for path in files:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                session = json.load(f)
            doms += [s["dom"] for s in session["states"] if (s.get("action") or {}).get("type")]
        start = time.perf_counter()
        pages = [simplify_dom(dom) for dom in doms]
        took = time.perf_counter() - start
        before = [count_tokens(json.dumps(d, separators=(",", ":"))) for d in doms[::25]]
        after = [count_tokens(p.html) for p in pages[::25]]
        start = time.perf_counter()
        for page in pages[::25]:
            cut_page(page, args.budget)
        cut_took = (time.perf_counter() - start) / len(pages[::25])
        rows.append(
            (
                f"MiniWoB DOMs ({len(files)} sessions)",
                len(doms),
                rate(len(doms), took),
                f"{statistics.median(before):,.0f} (JSON)",
                f"{statistics.median(after):,.0f}",
                f"{1000 * cut_took:.1f}",
            )
        )
    else:
        print(f"{MINIWOB} is absent: MiniWoB row skipped")

    html = shop_page(args.products)
    start = time.perf_counter()
    for _ in range(args.repeat):
        page = simplify_html(html)
    took = time.perf_counter() - start
    start = time.perf_counter()
    shown = cut_page(page, args.budget)
    cut_took = time.perf_counter() - start
    rows.append(
        (
            f"shop page, {len(html) / 1024:,.0f} KB",
            args.repeat,
            rate(args.repeat, took),
            f"{count_tokens(html):,} (HTML)",
            f"{count_tokens(page.html):,}",
            f"{1000 * cut_took:.1f}",
        )
    )
    head = ("pages", "n", "pages/s", "tokens before", "tokens after", f"cut to {args.budget} ms")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for row in [head, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    kept = sum(shown.survived(n) for n in page.names)
    print(
        f"shop page: {len(html):,} chars -> {len(page.html):,} chars, {len(page.names)} named "
        f"elements; cut to {args.budget} tokens keeps {kept} of them ({shown.tokens:,} tokens)"
    )


if __name__ == "__main__":
    main()
