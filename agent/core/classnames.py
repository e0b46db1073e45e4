"""Class names: the words written into a template's {} for each class, and where a run's
start names come from (`--classnames`). Torch-free; both sides use it (the evaluators to
score with names other than the dataset's, the search to check names an LLM proposes).

    --classnames (none)     the dataset's published labels (`Dataset.classnames`)
    --classnames SET        a named hand-made set of the dataset (`Dataset.named_sets`:
                            `clean` for fashion-mnist, `coop` for eurosat), or `published`
    --classnames FILE       one name per line in class order, or `folder,name` lines keyed
                            by the folder names (imagefolder, coop: `a_b` and `a-b` are two
                            classes) or the published names, in any order; a folder
                            name with a comma in double quotes, as in CSV ("Coat, long",coat)

A name is refused when it is empty, holds a brace (the template's {} is filled with it) or
repeats another class's name; a file is refused, in one line naming the file's line, for
that, for the wrong number of names or for mixing the two forms of lines. Start names made
readable from folder names (`_` and `-` as spaces) are refused naming the folder, with
--classnames FILE as the way out.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from pathlib import Path
from typing import Mapping, Sequence

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.pools import INLINE_COMMENT

PUBLISHED = "published"  # the set name of the dataset's own labels (also what no --classnames means)
MAX_NAME_CHARS = 60  # a class name an LLM proposes may be at most this long (folder names are not capped)


def readable_classname(folder: str) -> str:
    """'sea_lake' -> 'sea lake', 'ankle-boot' -> 'ankle boot' (folder names are often identifiers),
    one space between words: Hugging Face's fashion_mnist labels 'T - shirt / top', which read
    'T   shirt / top'."""
    return re.sub(" {2,}", " ", folder.replace("_", " ").replace("-", " ")).strip()


def name_key(name: str) -> str:
    """Two names that compare equal as class names: case, punctuation and spacing ignored
    ('T-shirt' and 't shirt' share it), and how the text is encoded (a folder made on macOS
    spells `café` with a combining accent, a typed names file with one letter)."""
    return re.sub(r"[\W_]+", " ", unicodedata.normalize("NFKC", name).lower()).strip()


def sides_of(name: str) -> tuple[str, ...]:
    """The sides of a class name written with '/' ("T-shirt/top": "T-shirt", "top"), each of
    which names the class too (in templates, proposed names and the judge's answers); () for
    a name without one."""
    return tuple(name.split("/")) if "/" in name else ()


def number_forms(key: str) -> set[str]:
    """A name and what it would be without a plural ending ("trousers" -> "trouser",
    "dresses" -> "dress"): so a proposed name "Trousers" is another class's name where the
    class is "Trouser" (agent/names.py), and a template writing "boot" names a class renamed
    "boots" (agent/proposals.py)."""
    forms = {key}
    if key.endswith("s") and len(key) > 3:
        forms.add(key[:-1])
        if key.endswith("es") and len(key) > 4:
            forms.add(key[:-2])
    return forms


# Endings that keep a word the same thing: the plural, and the diminutive (boot -> booties).
SAME_THING_ENDINGS = ("s", "es", "ie", "ies", "ee", "ees", "ette", "ettes")


def word_built_on(name: str, class_names: Sequence[str]) -> tuple[str, str] | None:
    """A word of `name` made longer from a class name's head noun, and that head noun
    ("bootlace" from "boot"), or None. English compounds are right-headed: a bootlace is a
    lace, a dressing gown a robe, a sandalboot a boot; so such a word names something else
    than the class, while a word that ends with it (handbag, raincoat) names a kind of it.
    The head noun is each name's last word (each side of a '/': "T-shirt/top" has two), and
    the whole name written as one word ("anklebootsy" from "ankle boot", kept by the demo);
    plural and diminutive endings stay the same thing (boots, booties, ankleboots). A word
    written with a hyphen is one word here ("dress-up" from "dress", kept on the bench: a
    dress-up is a costume; "shirt-dress" is a dress)."""
    heads = {}  # each form of a head noun (boots, boot) -> the head noun as the name writes it
    for class_name in class_names:
        for alternative in class_name.split("/"):
            words = name_key(alternative).split()
            if words and len(words[-1]) >= 3:
                heads.update({form: words[-1] for form in number_forms(words[-1])})
            if len(words) > 1:
                heads.update({form: " ".join(words) for form in number_forms("".join(words))})
    hyphenated = re.findall(r"[^\W_]+(?:-[^\W_]+)+", unicodedata.normalize("NFKC", name).lower())
    for word in [*name_key(name).split(), *hyphenated]:
        if number_forms(word) & heads.keys():
            continue
        for form, head in heads.items():
            if word.startswith(form) and word[len(form):] not in SAME_THING_ENDINGS:
                return word, head
    return None


RENAMES_SHOWN = 3  # renamed classes a line spells out before "..."


def renamed_pairs(start: Sequence[str] | None, names: Sequence[str] | None) -> list[tuple[str, str]]:
    """(start name, name) of each class `names` renames from `start`, in class order; [] for
    the start names themselves (`names` None) or no start known."""
    if not start or not names:
        return []
    return [(old, new) for old, new in zip(start, names) if new != old]


def renames(start: Sequence[str] | None, names: Sequence[str] | None) -> str:
    """The classes `names` renames from `start`, as "Trouser -> trousers; Pullover -> sweater"
    (a CSV cell); "" for none."""
    return "; ".join(f"{old} -> {new}" for old, new in renamed_pairs(start, names))


def first_renames(pairs: Sequence[tuple[str, str]], shown: int = RENAMES_SHOWN) -> str:
    """The first `shown` of `pairs` as "a -> b, c -> d ..." (a line of `compare`, `eval`)."""
    return ", ".join(f"{old} -> {new}" for old, new in pairs[:shown]) + (" ..." if len(pairs) > shown else "")


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a class name on its own (empty, braces), or None."""
    if not name.strip():
        return "empty name"
    if "{" in name or "}" in name:
        return "braces { } are not allowed in a class name (the template's {} is filled with it)"
    if len(name.strip().splitlines()) > 1:  # a folder may be named so; each name is one line of a meta-prompt
        return "a line break in a class name (each is written as one line)"
    control = next((ch for ch in name.strip() if unicodedata.category(ch) == "Cc"), None)
    if control is not None:  # `boot<TAB>bottes`: a 'folder,name' line written with another separator
        return f"a control character ({control!r}) in a class name ('folder,name' lines are split at a comma)"
    return None


def check_classnames(names: Sequence[str], count: int, what: str = "class names", folders: Sequence[str] = (),
                     then: str = "", folder_word: str = "folder", labels: Sequence[str] = ()) -> tuple[str, ...]:
    """`names` as a tuple, or PromptclimbError: `count` names, each valid, no two alike. A
    refusal names the class by its folder (`folder_word`: a Hugging Face dataset's label)
    where `folders` (the names `names` were made readable from, in class order) has one, and
    ends with `then` (the way out). `labels`: the data's own, listed where the count is wrong."""
    names = tuple(str(n).strip() for n in names)
    if len(names) != count:
        listed = f" ({', '.join(labels[:RENAMES_SHOWN + 2])}{', ...' if len(labels) > RENAMES_SHOWN + 2 else ''})" \
            if labels else ""
        raise PromptclimbError(f"{what}: {len(names)} names for {count} classes{listed}: one per class, in class order")
    folders = tuple(folders) if len(folders) == len(names) else ()
    ending = f": {then}" if then else ""
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        problem = name_problem(name)
        first = seen.setdefault(name_key(name), i)
        if not problem and first == i:
            continue
        if folders:  # the user knows the folder `a-b`, not the class 2 that reads as 'a b'
            # '🐱' and '🐶', 'A+' and 'A-' differ in symbols only: said why they read as one
            reads = ("an empty name" if problem == "empty name" else f"{name!r}: {problem}" if problem else
                     f"{name!r}, the same as {folder_word} {folders[first]!r} (class {first + 1})" +
                     ("" if names[first] == name else " once case, spaces, punctuation and symbols are ignored"))
            raise PromptclimbError(f"{what}: {folder_word} {folders[i]!r} (class {i + 1}) reads as {reads}{ending}")
        said = f"class {i + 1} {name!r}: {problem}" if problem else \
            f"class {i + 1} {name!r} repeats class {first + 1} {names[first]!r}" + \
            ("" if names[first] == name else " (case, spaces, punctuation and symbols are ignored)")
        raise PromptclimbError(f"{what}: {said}{ending}")
    return names


def names_by_label(names: Mapping[str, str], published: Sequence[str], folders: Sequence[str] = ()) -> tuple[str, ...]:
    """A run's names keyed by the labels it started from, in the class order of data whose
    labels are `published` (other data than the run's: `eval --run RUN --data-root DIR`),
    made readable from `folders` (`Dataset.folders`; () where they were not); PromptclimbError
    when the two hold other classes. A label matches its own spelling first, then its
    folder's (a run started on WordNet-ID folders before they read as WordNet names recorded
    the IDs: `n02085620`, now 'Chihuahua'), else the one run label that reads the same
    (`name_key`), as the label or as its folder: a folder `T-shirt_top` reads as 'T shirt
    top', the run's label is `T-shirt/top`; a folder `n02085620-Chihuahua` had read as
    'n02085620 Chihuahua'."""
    folders = tuple(folders) if len(folders) == len(published) else ()
    by_key: dict[str, list[str]] = {}
    for label in names:
        by_key.setdefault(name_key(label), []).append(label)

    def run_label(i: int, p: str) -> str | None:
        spellings = (p, folders[i]) if folders else (p,)
        exact = [s for s in spellings if s in names]
        alike = [by_key[name_key(s)][0] for s in spellings if len(by_key.get(name_key(s), [])) == 1]
        return (exact or alike or [None])[0]

    matched = {p: run_label(i, p) for i, p in enumerate(published)}
    missing = [p for p in published if matched[p] is None]
    extra = [label for label in names if label not in matched.values()]
    if missing or extra:
        said = [f"the data has {', '.join(map(repr, missing))} and the run does not"] if missing else []
        said += [f"the run has {', '.join(map(repr, extra))} and the data does not"] if extra else []
        raise PromptclimbError(f"the run's classes are not the data's: {'; '.join(said)}")
    return check_classnames([names[matched[p]] for p in published], len(published), "the run's class names")


def check_published(published: Sequence[str], folders: Sequence[str] = (), folder_word: str = "folder"
                    ) -> tuple[str, ...]:
    """A dataset's own labels as start names (a folder's names made readable: `_` and `-`
    as spaces), checked as any start names are, naming the folder (`folders`:
    `Dataset.folders`; `folder_word`: what one is) and the way out."""
    return check_classnames(published, len(published), "the dataset's own class names", folders,
                            "give your own names with --classnames FILE (one name per line in class order, "
                            f"or '{folder_word},name' lines)", folder_word)


def read_classnames(spec: str | None, published: Sequence[str],
                    named_sets: Mapping[str, Sequence[str]] | None = None,
                    folders: Sequence[str] = (), folder_word: str = "folder") -> tuple[str, ...]:
    """The start names `--classnames spec` means for a dataset whose labels are `published`
    (in class order), whose hand-made sets are `named_sets` and whose labels were made
    readable from `folders` (`Dataset.folders`; () where they were not). PromptclimbError,
    in one line, for an unknown set name, a missing file or a bad line of the file."""
    published = tuple(published)
    folders = tuple(folders) if len(folders) == len(published) else ()
    sets = {PUBLISHED: published, **{k: tuple(v) for k, v in (named_sets or {}).items()}}
    if spec is None or spec == PUBLISHED:
        return check_published(published, folders, folder_word)
    if spec in sets:
        return check_classnames(sets[spec], len(published), f"--classnames {spec}")
    if not spec.strip():  # as every empty value is said (docs/faults.md): it read `--classnames : neither ...`
        raise PromptclimbError(f"--classnames {spec!r}: expected a name set of this dataset ({', '.join(sets)}) "
                               "or a file")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise PromptclimbError(f"--classnames {spec}: neither a name set of this dataset "
                               f"({', '.join(sets)}) nor a file")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise PromptclimbError(f"--classnames {path}: not UTF-8 text ({exc.reason} at byte {exc.start}): save it "
                               "as UTF-8") from None
    except OSError as exc:
        raise PromptclimbError(f"--classnames {path}: cannot read it ({exc})") from None
    return _names_from_lines(lines, published, str(path), folders, folder_word)


def class_named(key: str, published: tuple[str, ...], keys: dict[str, list[int]], at: str,
                folders: tuple[str, ...] = ()) -> int:
    """The class a `folder,name` line's `key` names: the one whose folder (`folders`, where
    the published names were made readable from them) is spelled exactly so, else the one
    published exactly so, else the one it names with case and punctuation ignored (`keys`:
    name_key -> classes); refused where that is not one class ("Cat" and "cat" folders, or
    "a_b" and "a-b": each is found by its own spelling)."""
    labels = folders or published  # what the user sees on disk
    exact = [i for i, f in enumerate(folders) if f == key] or [i for i, p in enumerate(published) if p == key]
    found = exact or keys.get(name_key(key), [])
    if not found:
        raise PromptclimbError(f"{at}: {key!r} is not a class of this dataset ({', '.join(labels)})")
    if len(found) > 1:
        raise PromptclimbError(f"{at}: {key!r} matches {len(found)} classes "
                               f"({', '.join(repr(labels[i]) for i in found)}): write it as one of them is "
                               "spelled, or give one name per line in class order")
    return found[0]


# A `folder,name` line whose folder holds a comma quotes it, as a CSV field: "Coat, long",coat
QUOTED_KEY = re.compile(r'\s*("(?:[^"]|"")*")\s*,(.*)')


def unquoted(text: str) -> str:
    """`text` stripped, and without the double quotes of a CSV field (a doubled quote inside is one)."""
    text = text.strip()
    return text[1:-1].replace('""', '"') if len(text) >= 2 and text[0] == text[-1] == '"' else text


# what a user writes between a folder and its name other than the comma a `folder,name` line takes
_OTHER_SEPARATOR = re.compile(r"(.+?)\s*(:|;|=>|->|→|=|\|)\s*(.+)")


def _folder_and_name_otherwise(line: str, keys: dict[str, list[int]]) -> tuple[int, str] | None:
    """(the class, the name) where `line` is a class's label or folder, another separator than a
    comma (`_OTHER_SEPARATOR`) and a name; None for a line that is a class's label itself."""
    split = _OTHER_SEPARATOR.fullmatch(line)
    if not split or not keys.get(name_key(split.group(1))) or keys.get(name_key(line)):
        return None
    return keys[name_key(split.group(1))][0], split.group(3)


def folder_and_name(line: str) -> tuple[str, str] | None:
    """A `folder,name` line's two parts, or None without a comma. The name is all after the
    first comma outside quotes ("Trouser,pants, long" names Trouser 'pants, long')."""
    quoted = QUOTED_KEY.fullmatch(line)
    key, comma, name = (quoted.group(1), ",", quoted.group(2)) if quoted else line.partition(",")
    return (unquoted(key), unquoted(name)) if comma else None


def _reads_as_keyed(line: str) -> bool:
    """Whether `line` is written as a `folder,name` line: a comma with text right after it (a
    name of its own that holds a comma has a space after it: "Trouser, long")."""
    quoted = QUOTED_KEY.fullmatch(line)
    rest = quoted.group(2) if quoted else line.partition(",")[2]
    parts = folder_and_name(line)
    return parts is not None and bool(parts[0]) and bool(rest) and not rest[0].isspace()


def _keyed_lines(lines: list[str], keys: dict[str, list[int]], labels: tuple[str, ...], where: str,
                 numbers: list[int]) -> list[int]:
    """The indexes of the `lines` that read as `folder,name` lines (the part before a comma
    names a class: `keys`, name_key -> classes). The file is of the form most of its lines
    are (a name of its own may hold a comma: "Trouser, long"); PromptclimbError, naming the
    line, for a file that is not: as many lines of each form (which line 1 is says nothing,
    so the first line of the other form is named), or, among names in class order, a line
    whose comma follows another class than its place's (`labels`: the classes as the user
    knows them), which would name that other class's row. A `folder,name` file's other lines
    are refused as the file is read. `numbers`: each line's number in the file."""
    keyed = [i for i, parts in enumerate(map(folder_and_name, lines)) if parts and name_key(parts[0]) in keys]
    plain = [i for i, line in enumerate(lines) if i not in keyed and line.strip()]
    if len(keyed) > len(lines) / 2:
        return keyed
    strays = [i for i in plain if _reads_as_keyed(lines[i])]
    if len(keyed) + len(strays) > len(lines) / 2 and len(keyed) != len(plain):
        # `cat,feline` for a folder 02_cat, or another dataset's file: read as names in class
        # order, each class was named for another ('01 bird -> cat,feline'), unsaid
        key = folder_and_name(lines[strays[0]])[0]
        near = difflib.get_close_matches(key, labels, n=1, cutoff=0.5)
        raise PromptclimbError(f"--classnames {where} line {numbers[strays[0]]}: {key!r} is not a class of this "
                               f"dataset ({', '.join(labels[:10])}{', ...' if len(labels) > 10 else ''})"
                               f"{f'; did you mean {near[0]!r}?' if near else ''} ({len(keyed) + len(strays)} of the "
                               f"file's {len(lines)} lines read as 'folder,name' lines, which start with the class's "
                               "folder as spelled on disk)")
    if not keyed:
        return keyed
    way_out = "write every line as 'folder,name' (any order) or as one name (in class order)"
    if len(keyed) == len(plain):
        typo = next((i for i in plain if folder_and_name(lines[i])), None)
        if typo is not None:  # a 'folder,name' line whose folder is misspelt, beside as many right ones
            raise PromptclimbError(f"--classnames {where} line {numbers[typo]}: {folder_and_name(lines[typo])[0]!r} is "
                                   f"not a class of this dataset ({', '.join(labels)}), as line {numbers[keyed[0]]}'s "
                                   f"{folder_and_name(lines[keyed[0]])[0]!r} is")
        odd = max(keyed[0], plain[0])
        forms = ("reads as a 'folder,name' line", "is one name on its own")
        this, other = forms if odd in keyed else forms[::-1]
        raise PromptclimbError(f"--classnames {where} line {numbers[odd]}: {lines[odd].strip()!r} {this}, but line "
                               f"{numbers[min(keyed[0], plain[0])]} {other} (half the file's lines are each): {way_out}")
    for i in keyed:
        named = keys[name_key(folder_and_name(lines[i])[0])]
        if i < len(labels) and i not in named:
            raise PromptclimbError(f"--classnames {where} line {numbers[i]}: {lines[i].strip()!r} reads as a "
                                   f"'folder,name' line for {labels[named[0]]!r}, but {len(plain)} of the file's "
                                   f"{len(lines)} lines are one name each, in class order (line {numbers[i]} names "
                                   f"{labels[i]!r}): {way_out}")
    return keyed


def _names_from_lines(lines: list[str], published: tuple[str, ...], where: str,
                      folders: tuple[str, ...] = (), folder_word: str = "folder") -> tuple[str, ...]:
    """One name per line in class order, or `folder,name` lines (any order) when a line
    starts with a published name (or its folder spelling) and a comma; `# ...` lines are
    comments."""
    labels = folders or published  # a class as the user knows it: its folder where it has one
    while lines and not lines[-1].strip():  # blank lines at the end, as editors leave them
        lines = lines[:-1]
    keys: dict[str, list[int]] = {}
    # a class by its name or by its folder, which may read otherwise (`n02085620`: Chihuahua)
    for i, label in [*enumerate(published), *enumerate(folders)]:
        if i not in keys.setdefault(name_key(label), []):
            keys[name_key(label)].append(i)
    # '# ...' lines are comments, and so is the end of a line after ' # ', as in a --pool file;
    # the others keep their numbers in messages
    numbers = [n for n, line in enumerate(lines, start=1) if not line.lstrip().startswith("#")]
    lines = [INLINE_COMMENT.split(line, maxsplit=1)[0] for line in lines if not line.lstrip().startswith("#")]
    keyed_lines = _keyed_lines(lines, keys, labels, where, numbers)
    keyed = len(keyed_lines) > len(lines) / 2
    # lines of a folder and a name with another separator than a comma (a name of its own may
    # hold one: "Star Wars: A New Hope" beside a class "Star Wars")
    otherwise = {n: split for n, line in zip(numbers, lines)
                 if (split := _folder_and_name_otherwise(line.strip(), keys))}
    names: dict[int, str] = {}
    where_named: dict[str, int] = {}  # name_key -> line number
    for position, (number, raw) in enumerate(zip(numbers, lines)):
        at = f"--classnames {where} line {number}"
        if not raw.strip():
            raise PromptclimbError(f"{at}: empty line (one class name per line, nothing else)")
        if keyed:
            parts = folder_and_name(raw)
            if parts is None:
                raise PromptclimbError(f"{at}: {raw.strip()!r} is not a 'folder,name' line ({len(keyed_lines)} of the "
                                       f"file's {len(lines)} lines are)")
            key, name = parts
            c = class_named(key, published, keys, at, folders)
            if c in names:
                raise PromptclimbError(f"{at}: {folder_word if folders else 'class'} {labels[c]!r} is named twice")
        else:
            c, name = position, unquoted(raw)  # a column saved from a spreadsheet: "bird"
            if number in otherwise and len(otherwise) > len(lines) / 2:  # `AnnualCrop: crop`, `Ankle_boot;boot`
                # (a CSV of a locale whose separator is ';'), most of the file: a folder and a name each, one name
                i, rest = otherwise[number]
                raise PromptclimbError(f"{at}: {name!r} reads as {folder_word if folders else 'class'} {labels[i]!r} "
                                       f"and a name; write '{folder_word},name' lines with a comma: "
                                       f"'{labels[i]},{rest}'")
            if c >= len(published):
                raise PromptclimbError(f"{at}: one name too many: the dataset has {len(published)} classes "
                                       f"({', '.join(labels)})")
            other = [i for i in keys.get(name_key(name), []) if i != c]
            if other and c not in keys.get(name_key(name), []):
                # `bird`, `Cat`, `dog` for folders Cat, bird, dog: a listing that ignores case
                # sorts them so; class order is the folders' sorted by code point, capitals first
                raise PromptclimbError(f"{at}: {name!r} is {folder_word if folders else 'class'} {labels[other[0]]!r} "
                                       f"(class {other[0] + 1}), but line {number} names class {c + 1}, "
                                       f"{labels[c]!r}: one name per line follows class order ({', '.join(labels[:10])}"
                                       f"{', ...' if len(labels) > 10 else ''}); "
                                       f"or write '{folder_word},name' lines, in any order")
        problem = name_problem(name)
        if problem:
            raise PromptclimbError(f"{at}: {problem}")
        if name_key(name) in where_named:
            raise PromptclimbError(f"{at}: {name!r} repeats line {where_named[name_key(name)]} "
                                   "(two classes cannot share a name)")
        names[c] = name
        where_named[name_key(name)] = number
    missing = [labels[c] for c in range(len(published)) if c not in names]
    if missing:
        last = f"line {numbers[-1]} is the last" if lines else "the file holds no name"
        raise PromptclimbError(f"--classnames {where}: {last}, but {len(missing)} of the dataset's "
                               f"{len(published)} classes {'has' if len(missing) == 1 else 'have'} no name ({', '.join(missing[:5])}"
                               f"{', ...' if len(missing) > 5 else ''})")
    return tuple(names[c] for c in range(len(published)))
