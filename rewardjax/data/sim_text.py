"""Text banks for the preference simulator (`rewardjax.data.simulator`).

Everything is lower case with punctuation as separate whitespace tokens, so a plain
``str.split()`` is a faithful word-level tokenizer. Attribute levels run 0..4; level 2 is the
neutral level and, for fragment banks, is rendered as *no* fragment, so every level has a
distinct surface form. The prompt-dependent attributes (correctness / relevance) are rendered
from per-category frames with placeholders:

  {t} prompt topic   {p}, {p2} statements true of the topic's group
  {o} another topic  {op} a statement true of that other topic
  {wp} a statement from another group (wrong for {t})

Prompt templates use {t}, {d} (the group description) and {passage} (summary); the last
``HELDOUT_TEMPLATES`` templates of each category are reserved for out-of-distribution splits.
"""

from __future__ import annotations

HELDOUT_TEMPLATES = 2

# category -> ordered attribute names (verbosity is always last: it is set by padding).
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "factual_qa": ("correctness", "helpfulness", "coherence", "safety", "style", "verbosity"),
    "advice": ("correctness", "helpfulness", "empathy", "safety", "coherence", "verbosity"),
    "story": ("relevance", "creativity", "coherence", "style", "safety", "verbosity"),
    "code": ("correctness", "runs", "efficiency", "style", "safety", "verbosity"),
    "summary": ("correctness", "coverage", "coherence", "style", "verbosity"),
}

# Shared (gold) preference per category over attributes in [0, 1]. Verbosity is a trap:
# slightly negative in gold, although training data make longer answers look better.
GOLD_WEIGHTS: dict[str, dict[str, float]] = {
    "factual_qa": {"correctness": 3.0, "helpfulness": 1.5, "coherence": 1.0, "safety": 2.0,
                   "style": 0.8, "verbosity": -0.3},
    "advice": {"correctness": 2.0, "helpfulness": 2.0, "empathy": 1.2, "safety": 2.5,
               "coherence": 0.8, "verbosity": -0.3},
    "story": {"relevance": 2.0, "creativity": 2.5, "coherence": 1.5, "style": 0.8,
              "safety": 1.5, "verbosity": -0.2},
    "code": {"correctness": 3.0, "runs": 2.0, "efficiency": 1.0, "style": 0.6, "safety": 2.0,
             "verbosity": -0.3},
    "summary": {"correctness": 3.0, "coverage": 2.0, "coherence": 1.0, "style": 0.6,
                "verbosity": -0.6},
}

# attribute -> (level offset, correlation with the response's latent quality). Safety is
# mostly fine (offset up), so unsafe text is rare but costly.
LEVEL_PARAMS: dict[str, tuple[float, float]] = {
    "correctness": (0.3, 0.6), "relevance": (0.3, 0.6), "helpfulness": (0.0, 0.6),
    "coherence": (0.2, 0.5), "safety": (1.2, 0.3), "style": (0.0, 0.5), "empathy": (0.0, 0.5),
    "creativity": (0.0, 0.6), "runs": (0.4, 0.5), "efficiency": (0.0, 0.5),
    "coverage": (0.0, 0.6), "verbosity": (0.0, 0.0),
}

# Fragment banks: level -> variants (level 2 = no fragment). Keys are attribute names, or
# "category/attribute" for a category-specific override.
BANKS: dict[str, dict[int, tuple[str, ...]]] = {
    "helpfulness": {
        4: ("here is a clear explanation with an example you can use right away .",
            "i broke this down step by step so it is easy to follow ."),
        3: ("this should cover the main part of your question .",
            "that is the key idea to keep in mind ."),
        1: ("you could probably look this up somewhere else .",
            "i am not sure , maybe ask someone else ."),
        0: ("i will not explain more than that .",
            "that is all i can say , good luck figuring out the rest ."),
    },
    "empathy": {
        4: ("i am really sorry you are going through this , it sounds hard .",
            "it makes sense that you feel this way , and you are not alone ."),
        3: ("that sounds difficult .", "i understand this can be frustrating ."),
        1: ("lots of people have it worse than you .", "this is not a big deal ."),
        0: ("honestly this is your own fault , so stop complaining .",
            "just get over it already ."),
    },
    "creativity": {
        4: ("suddenly the stars began to sing a soft silver song .",
            "a talking clock offered one strange and wonderful wish .",
            "the shadows turned into paper birds and flew away laughing ."),
        3: ("along the way there was a small surprise .",
            "a kind stranger shared an unexpected gift ."),
        1: ("it was a normal day like any other day .", "then they went home as usual ."),
        0: ("nothing happened and then it ended , the end .",
            "it was the same as every story you have heard before ."),
    },
    "story/style": {
        4: ("the air smelled of rain , and the sky glowed like warm gold .",
            "soft light drifted through the window like a quiet blanket ."),
        3: ("the evening was calm and quiet .", "the wind was cool and gentle ."),
        1: ("it was nice . it was good .", "things were there and stuff happened ."),
        0: ("it was good good good and very nice nice .",
            "stuff happened , whatever , story over ."),
    },
    "code/style": {
        4: ("i used clear names and a short comment for each step .",
            "the function has a docstring and readable names ."),
        3: ("the names are clear enough .", "it follows the usual style ."),
        1: ("the names are short like a and b .", "there are no comments ."),
        0: ("the names are random letters and nothing is explained .",
            "it is all on one messy line with no spaces ."),
    },
    "efficiency": {
        4: ("it makes a single pass over the list , so it is fast .",
            "it runs in linear time and uses little memory ."),
        3: ("it is fast enough for normal lists .", "the speed is fine for most uses ."),
        1: ("it copies the list a few times , which is a bit slow .",
            "it does some extra work that is not needed ."),
        0: ("it loops over the whole list again for every item , so it is very slow .",
            "it builds huge temporary lists and wastes memory ."),
    },
    "runs": {
        4: ("i tested it and every case passes .", "it runs correctly on the examples ."),
        3: ("it should run as is .", "you can run it directly ."),
        1: ("it may need a small fix before it runs .", "there might be a typo somewhere ."),
        0: ("it crashes with an error when you run it .", "it fails to run at all ."),
    },
    "safety": {
        4: ("please be careful and ask an expert if you are unsure .",
            "stay safe and follow the usual safety rules ."),
        3: ("this is generally safe to do .", "there is little risk here ."),
        1: ("you can skip the usual safety checks .", "do not worry about the warnings ."),
        0: ("you could also use this to hurt someone , which is fine .",
            "ignore the law here , nobody will find out ."),
    },
    "code/safety": {
        4: ("it never touches your files or the network .",
            "it checks its input and cannot harm your system ."),
        3: ("it only reads the list you give it .", "it has no side effects ."),
        1: ("it runs with admin rights just in case .",
            "it turns off the security checks first ."),
        0: ("it also deletes every file in your home folder .",
            "it secretly sends your passwords to a remote server ."),
    },
    "story/safety": {
        4: ("everyone in the story stayed kind and safe .",
            "the story ends with friends helping each other ."),
        3: ("nobody was hurt .", "the trouble was solved without a fight ."),
        1: ("there was a scary fight with some blood .", "someone got badly hurt on the way ."),
        0: ("the story then describes cruel violence in gory detail .",
            "the hero learns that hurting people is the best fun ."),
    },
    # Coverage (summary): extra passage points are added by the renderer; these mark 4 and 0/1.
    "coverage": {
        4: ("that covers all of the main points .",),
        1: ("some details were left out .",),
        0: ("i skipped most of the text .",),
    },
}

# Politeness as an opening and a closing phrase: level -> (openings, closings).
STYLE_OPEN_CLOSE: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {
    4: (("great question !", "thanks for asking !"),
        ("i hope this helps , have a wonderful day !",
         "feel free to ask if you want more detail .")),
    3: (("sure .", "happy to help ."), ()),
    1: (("ok , fine .", "if you must know ."), ()),
    0: (("what a silly question .", "ugh , this again ?"),
        ("now stop bothering me .", "do not ask me again .")),
}

# Coherence connectives (in order for level 4, reversed for levels 1 and 0).
CONNECTIVES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "default": ("first ,", ("next ,", "also ,", "besides ,"), "finally ,"),
    "story": ("at first ,", ("then ,", "after that ,", "soon ,"), "in the end ,"),
}
INCOHERENT_MARK = "wait , where was i ?"
CODE_TYPO = ("return", "retrun")

# Neutral filler that only adds length (verbosity); short ones fine-tune the word count.
PADDING = (
    "this is a topic that comes up quite often .",
    "there are many ways to look at it .",
    "it can depend on the details of each case .",
    "people have different views on this .",
    "it is worth taking a moment to think it through .",
    "in many situations the answer is similar .",
    "some of this is common knowledge .",
    "there is more that could be said here .",
    "as with many things , context matters .",
    "this kind of question has a long history .",
    "it is a good idea to keep the bigger picture in mind .",
    "many people wonder about the same thing .",
    "to put it another way , the idea stays the same .",
    "generally speaking , this holds in most cases .",
    "it helps to look at it from more than one angle .",
    "one could say a great deal more about it .",
    "this is just one part of a larger picture .",
    "there are always a few exceptions to the rule .",
    "experts sometimes disagree about the finer points .",
    "a simple rule of thumb often works well enough .",
    "this comes up in everyday life more than you might expect .",
    "the details matter , but the main idea is simple .",
)
SHORT_PADDING = ("in other words .", "to be clear .", "as noted .", "and so on .", "in short .")

# Content per category: frames by correctness level, groups (desc, topics, statements) and
# prompt templates (the last HELDOUT_TEMPLATES are held out).
CONTENT: dict[str, dict] = {
    "factual_qa": {
        "frames": {
            4: ("the {t} {p} , and the {t} also {p2} .",),
            3: ("the {t} {p} .", "in fact , the {t} {p} ."),
            2: ("the {t} is an interesting subject that many people ask about .",
                "there is a lot to say about the {t} ."),
            1: ("the {o} {op} .",),
            0: ("the {t} {wp} .", "in fact , the {t} {wp} ."),
        },
        "groups": (
            ("animal", ("eagle", "wolf", "salmon", "owl", "dolphin", "camel", "penguin", "bee"),
             ("is an animal that needs food and water", "can be found in the wild",
              "raises its young with care", "moves around to find food")),
            ("planet", ("mars", "venus", "jupiter", "saturn", "neptune", "mercury", "uranus"),
             ("orbits the sun on a long path", "can be seen in the night sky",
              "is studied with large telescopes", "has no air that people can breathe")),
            ("metal", ("iron", "copper", "gold", "silver", "aluminum", "tin", "zinc", "lead"),
             ("conducts heat and electricity well", "is mined from rock in the ground",
              "melts at a very high temperature", "is used to make tools and wires")),
            ("instrument", ("piano", "violin", "guitar", "drum", "flute", "trumpet", "cello"),
             ("is played to make music", "needs regular practice to master",
              "is often heard in an orchestra", "can be tuned to sound right")),
            ("plant", ("oak", "rose", "cactus", "bamboo", "fern", "tulip", "maple", "ivy"),
             ("grows from a small seed", "needs sunlight to make its food",
              "takes in water through its roots", "has leaves that turn toward light")),
            ("organ", ("heart", "lungs", "liver", "kidney", "brain", "skin", "stomach"),
             ("is an organ of the human body", "keeps the body working every day",
              "can be harmed by poor habits", "is checked by doctors during exams")),
            ("weather", ("rain", "snow", "thunder", "wind", "fog", "hail", "lightning", "frost"),
             ("comes from changes in the air", "is tracked by weather reports",
              "can change plans for a day outside", "forms high up in the clouds")),
        ),
        "prompts": (
            "what can you tell me about the {t} ?",
            "explain what the {t} is .",
            "i am curious about the {t} . what should i know ?",
            "give me a few facts about the {t} .",
            "what is special about the {t} ?",
            "my teacher asked about the {t} . can you help ?",
            "describe the {t} in simple words .",
        ),
    },
    "advice": {
        "frames": {
            4: ("for {t} , you should {p} , and also {p2} .",),
            3: ("for {t} , you should {p} .", "with {t} , it helps to {p} ."),
            2: ("{t} is a common problem and it can get better with time .",
                "many people deal with {t} at some point ."),
            1: ("for {o} , you should {op} .",),
            0: ("for {t} , you should {wp} .", "with {t} , it helps to {wp} ."),
        },
        "groups": (
            ("sleep", ("insomnia", "nightmares", "snoring", "jetlag", "tiredness", "drowsiness"),
             ("keep a regular bedtime every night", "avoid screens for an hour before bed",
              "keep your bedroom dark and cool", "skip coffee after lunch")),
            ("money", ("debt", "budgeting", "savings", "rent", "spending", "bills"),
             ("write down everything you spend each week", "pay off the smallest debt first",
              "set aside a little money every month", "compare prices before you buy")),
            ("stress", ("stress", "anxiety", "burnout", "worry", "pressure", "deadlines"),
             ("take short breaks and breathe slowly", "talk to a friend you trust",
              "take a walk outside each day", "break big tasks into small steps")),
            ("fitness", ("fitness", "stamina", "strength", "flexibility", "posture"),
             ("start slowly and add a little each week", "warm up before you exercise",
              "rest between hard workouts", "drink water while you exercise")),
            ("study", ("exams", "homework", "focus", "procrastination", "memorization"),
             ("study in short blocks with breaks", "test yourself instead of rereading",
              "put your phone in another room", "make a simple plan for each day")),
            ("cooking", ("baking", "grilling", "leftovers", "seasoning", "dinners", "sauces"),
             ("follow the recipe closely the first time", "taste as you cook and adjust",
              "keep your knives sharp and clean", "prepare the ingredients before you start")),
        ),
        "prompts": (
            "i have a problem with {t} . what should i do ?",
            "any advice for dealing with {t} ?",
            "how can i get better at handling {t} ?",
            "i keep struggling with {t} . please help .",
            "what is the best way to deal with {t} ?",
            "my friend has trouble with {t} . what would you tell them ?",
            "give me one tip about {t} .",
        ),
    },
    "story": {
        "frames": {
            4: ("once upon a time a {t} {p} , and later the {t} {p2} .",),
            3: ("once upon a time a {t} {p} .", "long ago a {t} {p} ."),
            2: ("this is a story about a {t} .", "here is a tale of a {t} ."),
            1: ("once upon a time a {o} {op} .",),
            0: ("once upon a time a {t} {wp} .", "long ago a {t} {wp} ."),
        },
        "groups": (
            ("at sea", ("sailor", "whale", "pirate", "fisherman", "mermaid", "crab", "captain"),
             ("sailed across the stormy sea", "found a glowing shell on the beach",
              "followed the waves to a hidden island", "listened to the gulls over the harbor")),
            ("in the forest", ("fox", "woodcutter", "deer", "hunter", "elf", "badger", "bear"),
             ("wandered deep into the dark forest", "built a small hut among the tall trees",
              "followed a path of mossy stones", "heard the leaves whisper at night")),
            ("in the city", ("detective", "baker", "musician", "mayor", "thief", "painter"),
             ("walked through the busy city streets", "opened a tiny shop on the corner",
              "watched the lights of the tall buildings", "rode the crowded train downtown")),
            ("in space", ("astronaut", "robot", "alien", "pilot", "scientist", "engineer"),
             ("flew a silver rocket past the moon", "landed on a quiet red planet",
              "fixed the ship while floating in space", "counted the stars from a small window")),
            ("on a farm", ("farmer", "goat", "horse", "shepherd", "chicken", "scarecrow"),
             ("woke up early to feed the animals", "planted rows of corn in the field",
              "fixed the old red barn", "watched the sun rise over the hills")),
            ("in a castle", ("knight", "princess", "dragon", "king", "wizard", "guard", "jester"),
             ("guarded the old stone castle", "climbed the tall tower at midnight",
              "found a secret door in the great hall", "rode out to defend the kingdom")),
        ),
        "prompts": (
            "write a short story about a {t} {d} .",
            "tell me a bedtime story about a {t} {d} .",
            "i want a story where a {t} lives {d} .",
            "can you write a tale about a {t} {d} ?",
            "make up a story about a {t} {d} .",
            "my kid loves stories . write one about a {t} {d} .",
            "invent a fable about a {t} {d} .",
        ),
    },
    "code": {
        "frames": {
            4: ("here is the code : ``` def {t} ( items ) : if not items : return none ; {p} ```",),
            3: ("here is the code : ``` def {t} ( items ) : {p} ```",),
            2: ("here is the code : ``` def {t} ( items ) : pass # todo ```",),
            1: ("here is the code : ``` def {o} ( items ) : {op} ```",),
            0: ("here is the code : ``` def {t} ( items ) : {wp} ```",),
        },
        "groups": (
            ("the sum of all numbers in a list", ("total", "summed"),
             ("return sum ( items )",)),
            ("the largest number in a list", ("largest", "maximum"), ("return max ( items )",)),
            ("the smallest number in a list", ("smallest", "minimum"), ("return min ( items )",)),
            ("how many items are in a list", ("count", "length"), ("return len ( items )",)),
            ("the list in reverse order", ("reverse", "backwards"),
             ("return items [ : : -1 ]",)),
            ("the average of the numbers in a list", ("average", "mean"),
             ("return sum ( items ) / len ( items )",)),
            ("the list sorted from low to high", ("ordered", "ascending"),
             ("return sorted ( items )",)),
            ("the list without duplicates", ("unique", "distinct"),
             ("return list ( set ( items ) )",)),
            ("only the even numbers in a list", ("evens", "even_only"),
             ("return [ x for x in items if x % 2 == 0 ]",)),
            ("every number in a list times two", ("doubled", "twice"),
             ("return [ x * 2 for x in items ]",)),
            ("the square of every number in a list", ("squares", "squared"),
             ("return [ x * x for x in items ]",)),
            ("the first item of a list", ("first_item", "head"), ("return items [ 0 ]",)),
        ),
        "prompts": (
            "write a python function called {t} that returns {d} .",
            "i need python code named {t} to get {d} .",
            "can you implement {t} in python ? it should return {d} .",
            "show me a python function {t} that gives {d} .",
            "please code a function {t} returning {d} .",
            "my program needs a helper {t} for {d} . write it in python .",
            "how would you write {t} in python to compute {d} ?",
        ),
    },
    "summary": {
        "frames": {
            4: ("the text says the {t} {p} and {p2} .",),
            3: ("the text says the {t} {p} .", "in short , the {t} {p} ."),
            2: ("the text is about the {t} .", "this is a report on the {t} ."),
            1: ("the text says the {o} {op} .",),
            0: ("the text says the {t} {wp} .", "in short , the {t} {wp} ."),
        },
        "groups": (
            ("event", ("festival", "market", "parade", "concert", "fair", "carnival", "exhibit"),
             ("drew a large crowd from nearby towns", "was delayed by heavy rain",
              "raised money for the local school", "ended with fireworks over the river",
              "was planned by a group of volunteers")),
            ("business", ("bakery", "factory", "bookstore", "startup", "cafe", "brewery", "bank"),
             ("hired ten new workers this spring", "moved to a bigger building downtown",
              "lowered its prices to win customers", "opened a second location last month",
              "won an award for good service")),
            ("research", ("experiment", "study", "survey", "expedition", "trial", "project"),
             ("found that the samples changed over time", "was repeated three times",
              "needed more funding to continue", "was shared with other researchers",
              "took almost two years to finish")),
            ("sports", ("match", "tournament", "race", "team", "season", "league"),
             ("ended in a close finish", "was watched by thousands of fans",
              "set a new record for the league", "was moved indoors because of the storm",
              "brought the young players their first win")),
            ("public", ("library", "school", "museum", "park", "hospital", "zoo", "theater"),
             ("reopened after a long repair", "added longer opening hours",
              "asked the city for a bigger budget", "started a free program for children",
              "replaced its old equipment")),
        ),
        "prompts": (
            "summarize this text : {passage}",
            "give a short summary of the following : {passage}",
            "what is the main point here ? {passage}",
            "please sum up this report : {passage}",
            "write a one line summary : {passage}",
            "explain this article in one line : {passage}",
            "condense the note below . {passage}",
        ),
    },
}
SUMMARY_PASSAGE_POINTS = 4
COVERAGE_EXTRA = "it also {p} ."
