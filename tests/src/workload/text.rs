//! Words for posts, feedback and essays, drawn deterministically.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Moodle's `count_words()` and `count_letters()` of the message without its tags.
pub(super) fn counts(html: &str) -> (i64, i64) {
    let mut plain = String::with_capacity(html.len());
    let mut in_tag = false;
    for ch in html.chars() {
        match ch {
            '<' => {
                in_tag = true;
                plain.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => plain.push(c),
            _ => {}
        }
    }
    let words = plain.split_whitespace().count() as i64;
    let letters = plain.chars().filter(|c| !c.is_whitespace()).count() as i64;
    (words, letters)
}

/// Words for posts, feedback and essays: a course on the water cycle, in English and Swahili.
const WORDS: &[&str] = &[
    "water",
    "cycle",
    "rain",
    "cloud",
    "evaporation",
    "condensation",
    "river",
    "lake",
    "ocean",
    "sun",
    "heat",
    "vapour",
    "soil",
    "plants",
    "transpiration",
    "groundwater",
    "runoff",
    "drought",
    "flood",
    "season",
    "mvua",
    "maji",
    "jua",
    "mto",
    "ziwa",
    "bahari",
    "mawingu",
    "udongo",
    "mimea",
    "kiangazi",
    "masika",
    "the",
    "a",
    "of",
    "and",
    "in",
    "to",
    "is",
    "because",
    "when",
    "then",
    "so",
    "why",
    "how",
    "we",
    "our",
    "teacher",
    "question",
    "answer",
    "example",
    "village",
    "farm",
    "crops",
    "maize",
    "Kilimanjaro",
    "Dodoma",
    "Tanzania",
    "temperature",
    "pressure",
    "wind",
    "forest",
    "mountain",
    "valley",
    "well",
    "tap",
    "bucket",
    "boil",
    "freeze",
    "ice",
    "snow",
    "humidity",
    "measure",
    "gauge",
    "millimetres",
    "month",
    "year",
    "chart",
    "diagram",
    "experiment",
    "notes",
    "page",
    "exam",
    "group",
    "discussion",
    "think",
    "agree",
    "disagree",
    "explain",
    "describe",
    "compare",
    "because",
    "also",
    "more",
    "less",
    "very",
    "important",
    "difficult",
    "easy",
    "asante",
    "mwalimu",
    "wanafunzi",
    "swali",
    "jibu",
    "kwa",
    "na",
    "ya",
    "ni",
    "katika",
    "hii",
    "hiyo",
    "sana",
];

/// Deterministic text from one draw, so that a retried action writes the same words.
pub(super) struct Text(StdRng);

impl Text {
    pub(super) fn new(seed: u64) -> Text {
        Text(StdRng::seed_from_u64(seed))
    }

    fn word(&mut self) -> &'static str {
        WORDS[self.0.gen_range(0..WORDS.len())]
    }

    pub(super) fn title(&mut self) -> String {
        let n = self.0.gen_range(3..=7);
        let words: Vec<&str> = (0..n).map(|_| self.word()).collect();
        capitalise(&words.join(" "))
    }

    /// Sentences of 5-16 words, `min` to `max` words in all.
    pub(super) fn sentences(&mut self, min: usize, max: usize) -> String {
        let total = self.0.gen_range(min..=max);
        let mut out = Vec::new();
        let mut written = 0;
        while written < total {
            let n = self.0.gen_range(5..=16).min(total - written).max(1);
            let words: Vec<&str> = (0..n).map(|_| self.word()).collect();
            out.push(format!("{}.", capitalise(&words.join(" "))));
            written += n;
        }
        out.join(" ")
    }
}

fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_skip_tags_like_moodle() {
        assert_eq!(counts("<p>Mvua ni maji.</p>"), (3, 11));
    }

    #[test]
    fn text_is_the_same_for_the_same_draw() {
        let a = Text::new(5).sentences(10, 20);
        let b = Text::new(5).sentences(10, 20);
        assert_eq!(a, b);
        let n = a.split_whitespace().count();
        assert!((10..=20).contains(&n), "{n} words: {a}");
    }
}
