//! The SAM template against the functions' own configuration rules: every parameter value the
//! template (and its Rules) lets a deploy through with must give every function an environment
//! its `Config` accepts, or the deploy takes the API down at start-up. And the alarms an
//! on-call relies on fire when they should.
//!
//! A small evaluator of the template: `!Ref` (parameters, resources, pseudo parameters), `!If`
//! over `Conditions` (`!Equals`, `!Not`, `!And`, `!Or`), `!GetAtt` and `!Sub` (placeholders: no
//! configuration rule looks at an ARN's shape), and the `Rules` (`!Equals`, `!Contains`).

use std::collections::BTreeMap;

use serde_norway::{value::Tag, Value as Yaml};

fn template() -> Yaml {
    let path = format!("{}/../infra/template.yaml", env!("CARGO_MANIFEST_DIR"));
    serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).expect("template.yaml")
}

type Params = BTreeMap<String, String>;

/// A value of the template, evaluated; `None` for `AWS::NoValue`.
fn eval(t: &Yaml, params: &Params, v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        Yaml::Tagged(tagged) => {
            let arg = &tagged.value;
            if tagged.tag == Tag::new("Ref") {
                let name = arg.as_str().unwrap();
                match name {
                    "AWS::NoValue" => None,
                    n if n.starts_with("AWS::") => Some(format!("pseudo-{n}")),
                    n => Some(
                        params
                            .get(n)
                            .cloned()
                            .unwrap_or_else(|| format!("resource-{n}")),
                    ),
                }
            } else if tagged.tag == Tag::new("If") {
                let list = arg.as_sequence().unwrap();
                let cond = list[0].as_str().unwrap();
                let branch = if condition(t, params, cond) { 1 } else { 2 };
                eval(t, params, &list[branch])
            } else if tagged.tag == Tag::new("GetAtt") || tagged.tag == Tag::new("Sub") {
                Some("arn:aws:placeholder".into())
            } else {
                panic!(
                    "an intrinsic this evaluator does not know: {:?}",
                    tagged.tag
                )
            }
        }
        other => panic!("not a value: {other:?}"),
    }
}

fn condition(t: &Yaml, params: &Params, name: &str) -> bool {
    truth(t, params, &t["Conditions"][name])
}

fn truth(t: &Yaml, params: &Params, v: &Yaml) -> bool {
    let Yaml::Tagged(tagged) = v else {
        panic!("not a condition: {v:?}")
    };
    let list = tagged.value.as_sequence();
    match tagged.tag.to_string().trim_start_matches('!') {
        "Equals" => {
            let l = list.unwrap();
            eval(t, params, &l[0]) == eval(t, params, &l[1])
        }
        "Not" => !truth(t, params, &list.unwrap()[0]),
        "And" => list.unwrap().iter().all(|c| truth(t, params, c)),
        "Or" => list.unwrap().iter().any(|c| truth(t, params, c)),
        "Contains" => {
            let l = list.unwrap();
            let value = eval(t, params, &l[1]);
            l[0].as_sequence()
                .unwrap()
                .iter()
                .any(|x| eval(t, params, x) == value)
        }
        "Condition" => condition(t, params, tagged.value.as_str().unwrap()),
        other => panic!("a condition this evaluator does not know: {other}"),
    }
}

/// Whether the template's Rules let a deploy with `params` through.
fn rules_allow(t: &Yaml, params: &Params) -> bool {
    let Some(rules) = t["Rules"].as_mapping() else {
        return true;
    };
    rules.values().all(|rule| {
        let applies = match rule.get("RuleCondition") {
            Some(c) => truth(t, params, c),
            None => true,
        };
        !applies
            || rule["Assertions"]
                .as_sequence()
                .unwrap()
                .iter()
                .all(|a| truth(t, params, &a["Assert"]))
    })
}

/// Each function's environment (its binary name, and the Globals' variables with its own).
fn environments(t: &Yaml, params: &Params) -> Vec<(String, BTreeMap<String, String>)> {
    let globals = t["Globals"]["Function"]["Environment"]["Variables"]
        .as_mapping()
        .unwrap();
    let mut out = Vec::new();
    for (_, resource) in t["Resources"].as_mapping().unwrap() {
        if resource["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        let binary = resource["Metadata"]["BuildProperties"]["Binary"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut env = BTreeMap::new();
        let own = resource["Properties"]["Environment"]["Variables"].as_mapping();
        for vars in [Some(globals), own].into_iter().flatten() {
            for (k, v) in vars {
                let k = k.as_str().unwrap().to_owned();
                match eval(t, params, v) {
                    Some(v) => env.insert(k, v),
                    None => env.remove(&k),
                };
            }
        }
        out.push((binary, env));
    }
    out
}

/// The values a parameter may take that matter here: its default, its bounds, its allowed
/// values, and for a pattern a few that match it.
fn candidates(name: &str, p: &Yaml) -> Vec<String> {
    let mut out = Vec::new();
    let text = |v: &Yaml| match v {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        other => panic!("{name}: {other:?}"),
    };
    if let Some(d) = p.get("Default") {
        out.push(text(d));
    }
    for bound in ["MinValue", "MaxValue"] {
        if let Some(b) = p.get(bound) {
            out.push(text(b));
        }
    }
    if let Some(values) = p.get("AllowedValues").and_then(Yaml::as_sequence) {
        out.extend(values.iter().map(text));
    }
    if name == "DbPort" {
        out.extend(["1", "5432", "65535"].map(String::from));
    }
    out.sort();
    out.dedup();
    out
}

/// A parameter set with every parameter at its default, required ones made up.
fn defaults(t: &Yaml) -> Params {
    let mut params = Params::new();
    for (name, p) in t["Parameters"].as_mapping().unwrap() {
        let name = name.as_str().unwrap().to_owned();
        let value = match p.get("Default") {
            Some(Yaml::String(s)) => s.clone(),
            Some(Yaml::Number(n)) => n.to_string(),
            Some(other) => panic!("{name}: {other:?}"),
            None if name == "DbSecretArn" => {
                "arn:aws:secretsmanager:eu-west-1:123456789012:secret:dbtools/admin-Ab12Cd".into()
            }
            None => "subnet-or-group".into(),
        };
        params.insert(name, value);
    }
    params
}

/// Whether every function starts with `params`, and which refused what if not.
fn functions_start(t: &Yaml, params: &Params) -> Result<(), String> {
    for (binary, env) in environments(t, params) {
        if let Err(e) = shared::Config::from_lookup(|k| env.get(k).cloned()) {
            return Err(format!("{binary}: {e}"));
        }
    }
    Ok(())
}

#[test]
fn every_deploy_the_template_accepts_starts_every_function_and_no_other() {
    let t = template();
    let base = defaults(&t);
    assert_eq!(functions_start(&t, &base), Ok(()), "the defaults");
    // Each parameter alone at each of its values that matter.
    let mut tried = 0;
    for (name, p) in t["Parameters"].as_mapping().unwrap() {
        let name = name.as_str().unwrap();
        for value in candidates(name, p) {
            let mut params = base.clone();
            params.insert(name.to_owned(), value.clone());
            if rules_allow(&t, &params) {
                assert_eq!(functions_start(&t, &params), Ok(()), "{name} = {value}");
                tried += 1;
            }
        }
    }
    assert!(tried > 60, "{tried} deploys tried");
    // The parameters whose values the functions check against each other: every combination.
    let names = [
        "MigrateTenantTimeoutSecs",
        "MigrateStatementTimeoutSecs",
        "MigrateLockTimeoutMs",
        "MigrateLockRetries",
    ];
    let lists: Vec<Vec<String>> = names
        .iter()
        .map(|n| candidates(n, &t["Parameters"][*n]))
        .collect();
    let (mut allowed, mut refused) = (0, 0);
    for a in &lists[0] {
        for b in &lists[1] {
            for c in &lists[2] {
                for d in &lists[3] {
                    let mut params = base.clone();
                    for (n, v) in names.iter().zip([a, b, c, d]) {
                        params.insert((*n).to_owned(), v.clone());
                    }
                    let starts = functions_start(&t, &params);
                    if rules_allow(&t, &params) {
                        assert_eq!(starts, Ok(()), "the template accepts {params:?}");
                        allowed += 1;
                    } else {
                        assert!(
                            starts.is_err(),
                            "the Rules refuse a good deploy: {params:?}"
                        );
                        refused += 1;
                    }
                }
            }
        }
    }
    assert!(
        allowed > 100 && refused > 20,
        "{allowed} allowed, {refused} refused"
    );
}

#[test]
fn the_dead_letter_alarm_fires_for_each_new_dead_letter() {
    let t = template();
    let alarm = &t["Resources"]["MigrateDeadLetterAlarm"]["Properties"];
    // Not a static threshold on the depth (which stays in alarm while any dead letter is kept,
    // 14 days, and so never fires for the next one): the rise of the depth in a period.
    assert!(alarm.get("MetricName").is_none(), "{alarm:?}");
    let metrics = alarm["Metrics"].as_sequence().expect("a metric math alarm");
    let depth = metrics
        .iter()
        .find(|m| m["ReturnData"].as_bool() == Some(false))
        .expect("the depth");
    assert_eq!(
        depth["MetricStat"]["Metric"]["MetricName"].as_str(),
        Some("ApproximateNumberOfMessagesVisible")
    );
    let id = depth["Id"].as_str().unwrap();
    let returned = metrics
        .iter()
        .find(|m| m["ReturnData"].as_bool() == Some(true))
        .expect("what the alarm watches");
    assert_eq!(
        returned["Expression"].as_str(),
        Some(format!("DIFF(FILL({id}, 0))").as_str())
    );
    assert_eq!(
        alarm["ComparisonOperator"].as_str(),
        Some("GreaterThanThreshold")
    );
    assert_eq!(alarm["Threshold"].as_u64(), Some(0));
    assert_eq!(alarm["TreatMissingData"].as_str(), Some("notBreaching"));
}
