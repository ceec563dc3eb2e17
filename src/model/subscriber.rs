//! Who a subscription notification is about, as meterd's record keys can be matched against it:
//! the customer's ids (a legacy customer identifier, an AWS account id, or both) and, when the
//! notification names them, its product code and license ARN.

use serde::{Deserialize, Serialize};

use super::key::{Customer, RecordKey, Scope};

/// A customer's subscription to one product (or, with neither `product` nor `license`, to every
/// product: an agreement event names only the buyer's account).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Subscriber {
    /// Customer identifiers and AWS account ids; a record's customer matches either.
    pub customers: Vec<String>,
    pub product: Option<String>,
    pub license: Option<String>,
}

/// A license ARN's id (`l-…`), which AWS's events and ResolveCustomer spell with and without the
/// leading `arn:`: compared by this, a formatting difference cannot hide a match.
pub fn license_id(arn: &str) -> &str {
    arn.rsplit([':', '/']).next().unwrap_or(arn)
}

impl Subscriber {
    /// Whether the record `key` is this subscriber's: its customer is one of `customers`, and its
    /// scope is the product (any product when none is named) or the license. A record billed by
    /// license matches only the same license, or a subscriber that names no product at all: the
    /// key holds the license, not its product.
    pub fn matches(&self, key: &RecordKey) -> bool {
        let customer = match &key.customer {
            Customer::AwsAccountId(id) | Customer::Identifier(id) => id,
            Customer::Caller => return false,
        };
        if !self.customers.iter().any(|c| c == customer) {
            return false;
        }
        match &key.scope {
            Scope::ProductCode(code) => self.product.as_ref().is_none_or(|p| p == code),
            Scope::LicenseArn(arn) => match &self.license {
                Some(license) => license_id(license) == license_id(arn),
                None => self.product.is_none(),
            },
        }
    }

    /// How logs and `meterd customer` name it: `<ids> / <product or license or every product>`.
    pub fn describe(&self) -> String {
        let scope = match (&self.product, &self.license) {
            (_, Some(license)) => license.clone(),
            (Some(product), None) => product.clone(),
            (None, None) => "every product".into(),
        };
        format!("{} / {scope}", self.customers.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(scope: Scope, customer: Customer) -> RecordKey {
        RecordKey { scope, customer, dimension: "d".into(), hour: 0 }
    }

    #[test]
    fn a_subscriber_matches_its_customers_records_of_its_product_or_license() {
        let product = Subscriber {
            customers: vec!["111".into(), "c-1".into()],
            product: Some("p".into()),
            license: None,
        };
        assert!(product.matches(&key(Scope::ProductCode("p".into()), Customer::AwsAccountId("111".into()))));
        assert!(product.matches(&key(Scope::ProductCode("p".into()), Customer::Identifier("c-1".into()))));
        assert!(!product.matches(&key(Scope::ProductCode("q".into()), Customer::AwsAccountId("111".into()))));
        assert!(!product.matches(&key(Scope::ProductCode("p".into()), Customer::AwsAccountId("222".into()))));
        let arn = "arn:aws:license-manager::123:license:l-abc";
        assert!(!product.matches(&key(Scope::LicenseArn(arn.into()), Customer::AwsAccountId("111".into()))));
        let licensed = Subscriber {
            customers: vec!["111".into()],
            product: Some("p".into()),
            license: Some("aws:license-manager:us-east-1:123:l-abc".into()),
        };
        assert!(licensed.matches(&key(Scope::LicenseArn(arn.into()), Customer::AwsAccountId("111".into()))));
        let every = Subscriber { customers: vec!["111".into()], product: None, license: None };
        assert!(every.matches(&key(Scope::LicenseArn(arn.into()), Customer::AwsAccountId("111".into()))));
        assert!(every.matches(&key(Scope::ProductCode("q".into()), Customer::AwsAccountId("111".into()))));
        assert!(!every.matches(&key(Scope::ProductCode("q".into()), Customer::Caller)));
    }
}
