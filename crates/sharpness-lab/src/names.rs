//! The lab's named enums (methods, toy losses, datasets, variants, models, experiments) derive
//! their names once, from the variant: clap's `ValueEnum` for the command line (with the old
//! spellings as aliases), strum for `Display`, `&'static str` and the list `VARIANTS`, serde for
//! configuration and result files. This test holds the three spellings together: a rename in one
//! derive only (or an odd name such as the variants' `S`, spelt once per derive) fails here.

use clap::ValueEnum;
use serde::Serialize;
use strum::VariantArray;

use crate::data::{DatasetName, Variant};
use crate::methods::Method;
use crate::models::ModelKind;
use crate::reproduce::Experiment;
use crate::toys::Loss;

/// The command-line names of every variant, after checking that the other spellings agree.
fn names<T>() -> Vec<String>
where
    T: ValueEnum + VariantArray + std::fmt::Display + Serialize + Copy + Into<&'static str>,
{
    T::VARIANTS
        .iter()
        .map(|v| {
            let cli = v.to_possible_value().expect("no variant is hidden");
            let cli = cli.get_name();
            assert_eq!(v.to_string(), cli, "Display and the command line differ");
            assert_eq!(
                (*v).into(),
                cli,
                "the static name and the command line differ"
            );
            assert_eq!(
                serde_json::to_value(v).unwrap(),
                serde_json::Value::from(cli),
                "serde and the command line differ"
            );
            assert_eq!(
                T::from_str(cli, false).ok().as_ref().map(|p| p.to_string()),
                Some(cli.to_string())
            );
            cli.to_string()
        })
        .collect()
}

#[test]
fn every_named_enum_spells_its_names_the_same_everywhere() {
    assert_eq!(
        names::<Method>(),
        [
            "sgd",
            "sam",
            "asam",
            "fisher",
            "msam",
            "ssam",
            "infosam",
            "trace-sam",
            "frob-sam",
            "det-sam"
        ]
    );
    assert_eq!(names::<Loss>(), ["banana", "sinc", "paraboloid"]);
    assert_eq!(names::<DatasetName>(), ["mnist", "fashion-mnist"]);
    assert_eq!(names::<Variant>(), ["full", "S", "C"]);
    assert_eq!(names::<ModelKind>(), ["mlp", "cnn", "resnet"]);
}

#[test]
fn experiments_have_names_and_serialise_nowhere() {
    // Experiments are only named on the command line and in messages.
    let names: Vec<String> = Experiment::VARIANTS
        .iter()
        .map(|e| {
            let cli = e.to_possible_value().expect("no experiment is hidden");
            assert_eq!(e.to_string(), cli.get_name());
            e.to_string()
        })
        .collect();
    assert_eq!(
        names,
        [
            "toys",
            "bias",
            "table",
            "bad-minimum",
            "robustness",
            "alignment"
        ]
    );
}
