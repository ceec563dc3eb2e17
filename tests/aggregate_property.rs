//! The aggregator against a plain model: a list of accepted events, summed only at the end.
//! Random events (customers, dimensions, tag sets, ids, past and future timestamps, huge
//! quantities) interleave with clock advances and sealing; every sealed record must equal the
//! model's sum for its key, appear exactly once, and only once its hour is due. A late event goes
//! to its own hour unless that key's hour was already sealed; an id names one event.

use std::collections::{BTreeMap, HashMap, HashSet};

use meterd::aggregate::{Admission, AdmitError, Aggregator, Rules, SealedRecord};
use meterd::ids::Run;
use meterd::model::{Customer, Event, LateEvents, MAX_QUANTITY, Scope};
use proptest::prelude::*;

const SEAL_DELAY: i64 = 300;
const DEADLINE: i64 = 6 * 3600;
const TOLERANCE: i64 = 300;
const START: i64 = 1_795_340_000;

#[derive(Debug, Clone)]
enum Op {
    Event { customer: u8, dimension: u8, tags: u8, quantity: u32, offset: i64, id: Option<u8> },
    Advance(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..3u8, 0..2u8, 0..3u8, prop_oneof![0..100u32, Just(MAX_QUANTITY - 5)], -8 * 3600..900i64, proptest::option::of(0..20u8))
            .prop_map(|(customer, dimension, tags, quantity, offset, id)| Op::Event { customer, dimension, tags, quantity, offset, id }),
        1 => (1..5400i64).prop_map(Op::Advance),
    ]
}

fn tag_set(n: u8) -> Vec<(String, String)> {
    match n {
        0 => vec![],
        1 => vec![("team".into(), "a".into())],
        _ => vec![("env".into(), "prod".into()), ("team".into(), "b".into())],
    }
}

type Key = (u8, u8, i64);

/// What an event says: customer, dimension, tag set, quantity, timestamp.
type Content = (u8, u8, u8, u32, i64);

/// The model: the rules written out plainly over a list of accepted events.
struct Model {
    policy: LateEvents,
    accepted: Vec<(Key, u8, u32)>,
    /// Id → when it was accepted and the event it named.
    ids: HashMap<u8, (i64, Content)>,
    /// UTC hour → the last acceptance of an id in it. Ids are remembered in buckets of one hour
    /// of acceptance, forgotten together 25 hours after the bucket's last one.
    id_hours: HashMap<i64, i64>,
    sealed_hours_through: i64,
    /// Keys whose record was sealed.
    sealed: HashSet<Key>,
}

impl Model {
    fn total(&self, key: Key) -> u64 {
        self.accepted.iter().filter(|(k, _, _)| *k == key).map(|(_, _, q)| u64::from(*q)).sum()
    }

    /// What the aggregator must answer: Ok(Some(hour)) counted, Ok(None) duplicate, Err(why).
    fn admit(&mut self, now: i64, at: i64, event: Sent) -> Result<Option<i64>, AdmitError> {
        let Sent { customer, dimension, tags, quantity, id } = event;
        let content = (customer, dimension, tags, quantity, at);
        if let Some(id) = id
            && let Some((_, earlier)) =
                self.ids.get(&id).filter(|(at, _)| self.id_hours[&at.div_euclid(3600)] + 25 * 3600 > now)
        {
            return if *earlier == content {
                Ok(None)
            } else {
                Err(AdmitError::IdConflict { id: format!("id-{id}") })
            };
        }
        if at > now + TOLERANCE {
            return Err(AdmitError::FutureTimestamp { at, ahead: at - now });
        }
        let mut hour = at.div_euclid(3600) * 3600;
        if hour + DEADLINE <= now {
            return Err(AdmitError::PastDeadline { at, deadline: DEADLINE });
        }
        if meterd::clock::deadline(hour, DEADLINE) <= now {
            return Err(AdmitError::MonthClosed { at });
        }
        if self.sealed.contains(&(customer, dimension, hour)) {
            if self.policy == LateEvents::Reject {
                return Err(AdmitError::HourSealed { hour });
            }
            // Into the open hour, past any hour of this key sealed early; never into next month.
            let own = hour;
            hour = (now.div_euclid(3600) * 3600).max(own + 3600);
            while self.sealed.contains(&(customer, dimension, hour)) {
                hour += 3600;
            }
            if !meterd::clock::same_month(own, hour) {
                return Err(AdmitError::CarryAcrossMonth { hour: own });
            }
        }
        let total = self.total((customer, dimension, hour)) + u64::from(quantity);
        if total > u64::from(MAX_QUANTITY) {
            return Err(AdmitError::QuantityOverflow { total });
        }
        self.accepted.push(((customer, dimension, hour), tags, quantity));
        if let Some(id) = id {
            self.ids.insert(id, (now, content));
            let last = self.id_hours.entry(now.div_euclid(3600)).or_insert(now);
            *last = (*last).max(now);
        }
        Ok(Some(hour))
    }
}

/// The fields of one generated event.
#[derive(Debug, Clone, Copy)]
struct Sent {
    customer: u8,
    dimension: u8,
    tags: u8,
    quantity: u32,
    id: Option<u8>,
}

fn key_of(record: &SealedRecord) -> Key {
    let Customer::AwsAccountId(c) = &record.key.customer else { unreachable!() };
    let dimension = if record.key.dimension == "d0" { 0 } else { 1 };
    (c.parse().unwrap(), dimension, record.key.hour)
}

fn check(ops: Vec<Op>, policy: LateEvents) -> Result<(), TestCaseError> {
    let rules = Rules {
        seal_delay: SEAL_DELAY,
        deadline: DEADLINE,
        future_tolerance: TOLERANCE,
        late_events: policy,
        sealed_hours_are_frozen: false,
    };
    let mut aggregator = Aggregator::new(rules);
    let mut model = Model {
        policy,
        accepted: Vec::new(),
        ids: HashMap::new(),
        id_hours: HashMap::new(),
        sealed_hours_through: i64::MIN,
        sealed: HashSet::new(),
    };
    let mut now = START;
    let mut sealed: BTreeMap<Key, (SealedRecord, i64)> = BTreeMap::new();
    let mut seal = |aggregator: &mut Aggregator, model: &mut Model, now: i64| -> Result<(), TestCaseError> {
        aggregator.seal_due(now);
        model.sealed_hours_through =
            model.sealed_hours_through.max((now - SEAL_DELAY).div_euclid(3600) * 3600 - 3600);
        let through = model.sealed_hours_through;
        let due: Vec<Key> = model.accepted.iter().map(|(k, _, _)| *k).filter(|k| k.2 <= through).collect();
        model.sealed.extend(due);
        let delta = aggregator.take_delta();
        // The id runs a checkpoint would write, in memory: later lookups read them.
        let runs = delta
            .ids
            .files
            .freeze
            .iter()
            .map(|s| Run::in_memory(s.number, s.entries(), s.first_at, s.last_at))
            .collect();
        aggregator.install_id_runs(runs);
        for record in delta.sealed {
            let key = key_of(&record);
            prop_assert!(key.2 + 3600 + SEAL_DELAY <= now, "sealed before its hour was due");
            prop_assert!(sealed.insert(key, (record, now)).is_none(), "sealed twice: {key:?}");
        }
        Ok(())
    };
    for op in ops {
        match op {
            Op::Advance(secs) => {
                now += secs;
                seal(&mut aggregator, &mut model, now)?;
            }
            Op::Event { customer, dimension, tags, quantity, offset, id } => {
                let at = now + offset;
                let event = Event {
                    scope: Scope::ProductCode("p".into()),
                    customer: Customer::AwsAccountId(customer.to_string()),
                    dimension: format!("d{dimension}"),
                    quantity,
                    timestamp: Some(at),
                    tags: tag_set(tags),
                    id: id.map(|i| format!("id-{i}")),
                    peer: 1000,
                    id_print: None,
                };
                let want = model.admit(now, at, Sent { customer, dimension, tags, quantity, id });
                let got = match aggregator.admit(event, now) {
                    Ok(Admission::Counted { admitted, .. }) => Ok(Some(admitted.key.hour)),
                    Ok(Admission::Duplicate { .. }) => Ok(None),
                    Err(error) => Err(error),
                };
                prop_assert_eq!(got, want);
            }
        }
    }
    now += 3600 + SEAL_DELAY + 3600;
    seal(&mut aggregator, &mut model, now)?;
    prop_assert_eq!(aggregator.open_records(), 0);

    let mut expected: BTreeMap<Key, (u64, BTreeMap<u8, u64>)> = BTreeMap::new();
    for (key, tags, quantity) in &model.accepted {
        let entry = expected.entry(*key).or_default();
        entry.0 += u64::from(*quantity);
        *entry.1.entry(*tags).or_default() += u64::from(*quantity);
    }
    prop_assert_eq!(sealed.len(), expected.len());
    for (key, (total, by_tags)) in expected {
        let (record, _) = &sealed[&key];
        prop_assert_eq!(u64::from(record.quantity), total);
        prop_assert_eq!(record.allocations.iter().map(|a| u64::from(a.quantity)).sum::<u64>(), total);
        let got: BTreeMap<Vec<(String, String)>, u64> =
            record.allocations.iter().map(|a| (a.tags.clone(), u64::from(a.quantity))).collect();
        let want: BTreeMap<Vec<(String, String)>, u64> =
            by_tags.into_iter().map(|(t, q)| (tag_set(t), q)).collect();
        prop_assert_eq!(got, want);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn carry_forward_matches_the_model(ops in proptest::collection::vec(op(), 1..200)) {
        check(ops, LateEvents::CarryForward)?;
    }

    #[test]
    fn reject_matches_the_model(ops in proptest::collection::vec(op(), 1..200)) {
        check(ops, LateEvents::Reject)?;
    }
}
