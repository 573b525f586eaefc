//! The routes exist in three places: the local router of `cargo lambda watch` (Cargo.toml),
//! the SAM template (what API Gateway serves) and the OpenAPI description. They must agree.

use std::collections::BTreeSet;

use serde_norway::Value as Yaml;

type Route = (String, String, String); // (method, path, function)

fn repo_file(path: &str) -> String {
    let full = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

fn local_routes() -> BTreeSet<Route> {
    let manifest: toml::Table = repo_file("Cargo.toml").parse().expect("Cargo.toml");
    let router = manifest["workspace"]["metadata"]["lambda"]["watch"]["router"]
        .as_table()
        .expect("[workspace.metadata.lambda.watch.router]");
    let mut routes = BTreeSet::new();
    for (path, targets) in router {
        for t in targets.as_array().expect("a list of {method, function}") {
            routes.insert((
                t["method"].as_str().unwrap().to_owned(),
                path.clone(),
                t["function"].as_str().unwrap().to_owned(),
            ));
        }
    }
    routes
}

fn template_routes() -> BTreeSet<Route> {
    let template: Yaml =
        serde_norway::from_str(&repo_file("infra/template.yaml")).expect("template.yaml");
    let mut routes = BTreeSet::new();
    for (_, resource) in template["Resources"].as_mapping().unwrap() {
        if resource["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        let binary = resource["Metadata"]["BuildProperties"]["Binary"]
            .as_str()
            .expect("Binary")
            .to_owned();
        let Some(events) = resource["Properties"]["Events"].as_mapping() else {
            continue;
        };
        for (_, event) in events {
            if event["Type"].as_str() == Some("HttpApi") {
                let p = &event["Properties"];
                routes.insert((
                    p["Method"].as_str().unwrap().to_uppercase(),
                    p["Path"].as_str().unwrap().to_owned(),
                    binary.clone(),
                ));
            }
        }
    }
    routes
}

fn openapi_routes() -> BTreeSet<(String, String)> {
    let spec: Yaml =
        serde_norway::from_str(&repo_file("infra/openapi.yaml")).expect("openapi.yaml");
    let mut routes = BTreeSet::new();
    for (path, item) in spec["paths"].as_mapping().unwrap() {
        for (method, _) in item.as_mapping().unwrap() {
            let method = method.as_str().unwrap();
            if ["get", "post", "put", "patch", "delete"].contains(&method) {
                routes.insert((method.to_uppercase(), path.as_str().unwrap().to_owned()));
            }
        }
    }
    routes
}

#[test]
fn local_router_template_and_openapi_declare_the_same_routes() {
    let local = local_routes();
    let deployed = template_routes();
    assert_eq!(local.len(), 18, "{local:?}");
    assert_eq!(
        local, deployed,
        "Cargo.toml's watch router and infra/template.yaml differ"
    );
    let documented: BTreeSet<(String, String)> = local
        .iter()
        .map(|(m, p, _)| (m.clone(), p.clone()))
        .collect();
    assert_eq!(
        documented,
        openapi_routes(),
        "infra/openapi.yaml documents other routes"
    );
}
