//! The budget store: every budget account's spend and open reservations in its current window.
//!
//! [`BudgetStore`] is the seam for a shared store (Redis, for several replicas): its operations
//! are one atomic reserve over all the accounts a call charges, and one settle. [`Embedded`] is
//! the in-process store; it is durable through the audit log, from which it is rebuilt on start
//! (`super::replay`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// Money (nano-dollars) and tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amount {
    pub nano_usd: u64,
    pub tokens: u64,
}

impl Amount {
    fn add(self, o: Amount) -> Amount {
        Amount {
            nano_usd: self.nano_usd.saturating_add(o.nano_usd),
            tokens: self.tokens.saturating_add(o.tokens),
        }
    }

    fn sub(self, o: Amount) -> Amount {
        Amount {
            nano_usd: self.nano_usd.saturating_sub(o.nano_usd),
            tokens: self.tokens.saturating_sub(o.tokens),
        }
    }
}

/// A budget's limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    pub nano_usd: Option<u64>,
    pub tokens: Option<u64>,
}

impl Caps {
    fn admits(&self, used: Amount) -> bool {
        self.nano_usd.is_none_or(|c| used.nano_usd <= c) && self.tokens.is_none_or(|c| used.tokens <= c)
    }

    /// The share used, the larger of the two (1.0 = exhausted).
    pub fn share(&self, used: Amount) -> f64 {
        let s =
            |cap: Option<u64>, n: u64| cap.map_or(0.0, |c| if c == 0 { 1.0 } else { n as f64 / c as f64 });
        s(self.nano_usd, used.nano_usd).max(s(self.tokens, used.tokens))
    }
}

/// One account a call charges: a budget (by name), the subject it is kept for (a team, a user,
/// a key, `team/model`), and the window the call falls in (its start, Unix seconds; 0 for a
/// total budget).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRef {
    pub budget: Arc<str>,
    pub subject: Arc<str>,
    pub window: i64,
    /// The window's end (none for a total budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
    #[serde(skip)]
    pub caps: Caps,
}

/// Why a reservation was refused: the first account it did not fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    pub account: AccountRef,
    /// Spent plus reserved before this call.
    pub used: Amount,
}

/// A budget account crossing a threshold (80% or 100%) at a settlement.
#[derive(Debug, Clone, PartialEq)]
pub struct Crossing {
    pub account: AccountRef,
    pub threshold: u8,
    pub spent: Amount,
}

/// An account's state, for reports and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountState {
    pub account: AccountRef,
    pub spent: Amount,
    pub reserved: Amount,
}

pub trait BudgetStore: Send + Sync + 'static {
    /// Reserves `amount` on every account, or on none: refused when any account's spent plus
    /// reserved plus `amount` would pass one of its caps.
    fn reserve(&self, accounts: &[AccountRef], amount: Amount) -> Result<(), Exceeded>;

    /// Releases a reservation of `reserved` and charges `actual` instead, on every account (of
    /// the window it was reserved in; a window that has since rolled over is not touched).
    fn settle(&self, accounts: &[AccountRef], reserved: Amount, actual: Amount) -> Vec<Crossing>;

    /// Charges without a reservation (the rebuild from the log).
    fn restore(&self, accounts: &[AccountRef], spent: Amount);

    fn accounts(&self) -> Vec<AccountState>;
}

#[derive(Debug, Default, Clone, Copy)]
struct Account {
    window: i64,
    spent: Amount,
    reserved: Amount,
}

/// The in-process store: one lock, held for a few map lookups per call.
#[derive(Default)]
pub struct Embedded {
    /// budget name -> subject -> account.
    accounts: Mutex<Books>,
}

impl Embedded {
    pub fn new() -> Embedded {
        Embedded::default()
    }
}

type Books = HashMap<Arc<str>, HashMap<Arc<str>, (Caps, Account)>>;

/// The account of `r` in its window. Another window (a new day; or a budget whose window was
/// reconfigured) starts afresh when `fresh`; a settlement (`fresh` false) of another window
/// touches nothing.
fn account<'a>(books: &'a mut Books, r: &AccountRef, fresh: bool) -> Option<&'a mut Account> {
    // Looked up by reference first: the names are cloned only for a new account.
    if !books.contains_key(&r.budget) {
        books.insert(r.budget.clone(), HashMap::new());
    }
    let by_subject = books.get_mut(&r.budget)?;
    if !by_subject.contains_key(&r.subject) {
        let fresh = Account {
            window: r.window,
            ..Account::default()
        };
        by_subject.insert(r.subject.clone(), (r.caps, fresh));
    }
    let entry = by_subject.get_mut(&r.subject)?;
    entry.0 = r.caps;
    let a = &mut entry.1;
    if fresh && r.window != a.window {
        *a = Account {
            window: r.window,
            ..Account::default()
        };
    }
    (r.window == a.window).then_some(a)
}

impl BudgetStore for Embedded {
    fn reserve(&self, accounts: &[AccountRef], amount: Amount) -> Result<(), Exceeded> {
        let mut books = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        for r in accounts {
            if let Some(a) = account(&mut books, r, true) {
                let used = a.spent.add(a.reserved);
                if !r.caps.admits(used.add(amount)) {
                    return Err(Exceeded {
                        account: r.clone(),
                        used,
                    });
                }
            }
        }
        for r in accounts {
            if let Some(a) = account(&mut books, r, true) {
                a.reserved = a.reserved.add(amount);
            }
        }
        Ok(())
    }

    fn settle(&self, accounts: &[AccountRef], reserved: Amount, actual: Amount) -> Vec<Crossing> {
        let mut crossings = Vec::new();
        let mut books = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        for r in accounts {
            if let Some(a) = account(&mut books, r, false) {
                let before = r.caps.share(a.spent);
                a.reserved = a.reserved.sub(reserved);
                a.spent = a.spent.add(actual);
                let after = r.caps.share(a.spent);
                for (threshold, at) in [(80u8, 0.8), (100, 1.0)] {
                    if before < at && after >= at {
                        crossings.push(Crossing {
                            account: r.clone(),
                            threshold,
                            spent: a.spent,
                        });
                    }
                }
            }
        }
        crossings
    }

    fn restore(&self, accounts: &[AccountRef], spent: Amount) {
        let mut books = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        for r in accounts {
            if let Some(a) = account(&mut books, r, true) {
                a.spent = a.spent.add(spent);
            }
        }
    }

    fn accounts(&self) -> Vec<AccountState> {
        let books = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<AccountState> = books
            .iter()
            .flat_map(|(budget, m)| {
                m.iter().map(|(subject, (caps, a))| AccountState {
                    account: AccountRef {
                        budget: budget.clone(),
                        subject: subject.clone(),
                        window: a.window,
                        until: None,
                        caps: *caps,
                    },
                    spent: a.spent,
                    reserved: a.reserved,
                })
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.account.budget, &a.account.subject).cmp(&(&b.account.budget, &b.account.subject))
        });
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn acct(budget: &str, subject: &str, window: i64, usd: u64) -> AccountRef {
        AccountRef {
            budget: budget.into(),
            subject: subject.into(),
            window,
            until: None,
            caps: Caps {
                nano_usd: Some(usd),
                tokens: None,
            },
        }
    }

    fn amt(n: u64) -> Amount {
        Amount {
            nano_usd: n,
            tokens: n,
        }
    }

    #[test]
    fn reserve_is_all_or_nothing_and_exact_at_the_cap() {
        let s = Embedded::new();
        let team = acct("team", "research", 0, 100);
        let user = acct("user", "me", 0, 30);
        let both = [team.clone(), user.clone()];
        s.reserve(&both, amt(30)).unwrap();
        // The user budget is full: the team budget must not keep a partial reservation.
        let e = s.reserve(&both, amt(1)).unwrap_err();
        assert_eq!(e.account, user);
        assert_eq!(e.used, amt(30));
        s.reserve(std::slice::from_ref(&team), amt(70)).unwrap();
        assert!(s.reserve(std::slice::from_ref(&team), amt(1)).is_err());
        // Settling for less frees the difference.
        s.settle(&both, amt(30), amt(10));
        s.reserve(&[team], amt(20)).unwrap();
    }

    #[test]
    fn a_new_window_starts_afresh_and_an_old_settlement_does_not_touch_it() {
        let s = Embedded::new();
        let day1 = acct("daily", "t", 100, 10);
        let day2 = acct("daily", "t", 200, 10);
        s.reserve(std::slice::from_ref(&day1), amt(10)).unwrap();
        s.reserve(std::slice::from_ref(&day2), amt(10)).unwrap();
        s.settle(&[day1], amt(10), amt(10));
        let st = s.accounts();
        assert_eq!(st[0].account.window, 200);
        assert_eq!(st[0].reserved, amt(10));
        assert_eq!(st[0].spent, Amount::default());
    }

    #[test]
    fn crossings_fire_once_per_threshold() {
        let s = Embedded::new();
        let a = acct("b", "t", 0, 100);
        let one = std::slice::from_ref(&a);
        assert!(s.settle(one, Amount::default(), amt(50)).is_empty());
        let c = s.settle(one, Amount::default(), amt(40));
        assert_eq!(c.iter().map(|c| c.threshold).collect::<Vec<_>>(), vec![80]);
        let c = s.settle(one, Amount::default(), amt(40));
        assert_eq!(c.iter().map(|c| c.threshold).collect::<Vec<_>>(), vec![100]);
        assert!(s.settle(one, Amount::default(), amt(1)).is_empty());
    }
}
