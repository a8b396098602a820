use rand::rngs::StdRng;
use rand::SeedableRng;

use super::bucket::Bucket;
use super::conn::{ConnDice, Fault};
use super::*;

#[test]
fn same_seed_same_fates_and_outages() {
    let profile = LinkProfile::default()
        .seed(42)
        .cut_mean_bytes(100_000)
        .stalls(50_000, Duration::from_secs(1))
        .refuse_probability(0.1);
    let draw = |seed: u64| {
        let mut dice = FaultDice::new(seed);
        let fates: Vec<ConnFate> = (0..1000).map(|_| dice.connection(&profile)).collect();
        let gaps: Vec<Duration> = (0..100)
            .map(|_| dice.outage_gap(Duration::from_secs(30)))
            .collect();
        (fates, gaps)
    };
    assert_eq!(draw(42), draw(42));
    assert_ne!(draw(42).0, draw(43).0);
    assert_ne!(draw(42).1, draw(43).1);
}

#[test]
fn dice_follow_the_profile() {
    let profile = LinkProfile::default()
        .cut_mean_bytes(100_000)
        .refuse_probability(0.2);
    let mut dice = FaultDice::new(7);
    let fates: Vec<ConnFate> = (0..20_000).map(|_| dice.connection(&profile)).collect();
    let refused = fates.iter().filter(|f| f.refused).count() as f64 / fates.len() as f64;
    assert!((0.18..0.22).contains(&refused), "refused share {refused}");
    let mean = fates.iter().filter_map(|f| f.cut_after).sum::<u64>() as f64 / fates.len() as f64;
    assert!((95_000.0..105_000.0).contains(&mean), "mean cut {mean}");
    assert!(fates.iter().all(|f| f.stall_after.is_none()));
}

#[test]
fn a_missing_fault_does_not_shift_the_others() {
    let with = LinkProfile::default()
        .cut_mean_bytes(1000)
        .refuse_probability(0.5);
    let without = with.clone().stalls(500, Duration::from_millis(10));
    let (mut a, mut b) = (FaultDice::new(1), FaultDice::new(1));
    for _ in 0..100 {
        let (fa, fb) = (a.connection(&with), b.connection(&without));
        assert_eq!(
            (fa.refused, fa.cut_after, fa.seed),
            (fb.refused, fb.cut_after, fb.seed)
        );
    }
}

#[test]
fn spend_stops_exactly_at_the_faults() {
    let mut d = ConnDice {
        rng: StdRng::seed_from_u64(0),
        cut_left: Some(2500),
        stall_left: Some(1000),
        stall_mean: Some(1_000_000),
        stall_for: Duration::from_millis(3),
    };
    assert_eq!(d.spend(600), (600, None));
    assert_eq!(
        d.spend(600),
        (400, Some(Fault::Stall(Duration::from_millis(3))))
    );
    assert!(d.stall_left.is_some_and(|l| l > 1500), "redrawn");
    assert_eq!(d.spend(1000), (1000, None));
    assert_eq!(d.spend(1000), (500, Some(Fault::Cut)));
}

#[test]
fn bucket_books_link_time_in_order() {
    let bucket = Bucket::new(Some(800_000)); // 100 000 bytes/s, 2000-byte burst
    let t0 = Instant::now();
    assert_eq!(bucket.reserve(2000, t0), t0, "the burst goes at once");
    let ms = |t: Instant| (t - t0).as_secs_f64() * 1000.0;
    let later = ms(bucket.reserve(10_000, t0));
    assert!((99.9..100.1).contains(&later), "{later} ms");
    let after = ms(bucket.reserve(10_000, t0));
    assert!((199.9..200.1).contains(&after), "queued behind: {after} ms");
    assert_eq!(bucket.slice(), 1000);
    assert_eq!(Bucket::new(None).reserve(1 << 30, t0), t0);
}

#[test]
fn profile_validation() {
    assert!(LinkProfile::default().rate_bps(0).validate().is_err());
    assert!(LinkProfile::default()
        .refuse_probability(1.5)
        .validate()
        .is_err());
    assert!(LinkProfile::default()
        .cut_every(Duration::ZERO)
        .validate()
        .is_err());
    assert!(LinkProfile::default()
        .rate_bps(256_000)
        .latency(Duration::from_millis(300))
        .cut_every(Duration::from_secs(30))
        .validate()
        .is_ok());
}
