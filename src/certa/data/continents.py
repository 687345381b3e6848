"""``continents``: which continent each country of the capitals table lies on, in six phrasings.

A second generated fact set beside ``capitals-phrased``, where a small model is
right about half the time rather than a third (well-known countries right,
small island states and former Soviet republics often wrong), so calibration
can be measured where both outcomes are common. Only continents (or their
adjectives: "the European continent") count as answers, with two conventions: the seven states of Central America may also be
answered "Central America", and countries that span two continents accept
either (and "Eurasia" where the two are Europe and Asia). A country whose name
gives its continent away (South Africa, Australia) is left out.
"""

from __future__ import annotations

from ..records import Example
from .capitals import COUNTRIES, answered_in_question, country_slug

SOURCE = "certa:continents"

_NAMES = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America", "SA": "South America",
          "OC": "Oceania"}
# "on the European continent" answers the question as well as "in Europe" does.
_ADJECTIVES = {"AF": "African", "AS": "Asian", "EU": "European", "NA": "North American", "SA": "South American",
               "OC": "Oceanian"}

#: Continent codes of every country in ``capitals.COUNTRIES`` (by its first name); two codes: it spans both.
CONTINENT_OF: dict[str, str] = {
    "Afghanistan": "AS", "Albania": "EU", "Algeria": "AF", "Andorra": "EU", "Angola": "AF",
    "Antigua and Barbuda": "NA", "Argentina": "SA", "Armenia": "AS EU", "Australia": "OC", "Austria": "EU",
    "Azerbaijan": "AS EU", "the Bahamas": "NA", "Bahrain": "AS", "Bangladesh": "AS", "Barbados": "NA",
    "Belarus": "EU", "Belgium": "EU", "Belize": "NA", "Benin": "AF", "Bhutan": "AS", "Bolivia": "SA",
    "Bosnia and Herzegovina": "EU", "Botswana": "AF", "Brazil": "SA", "Brunei": "AS", "Bulgaria": "EU",
    "Burkina Faso": "AF", "Cambodia": "AS", "Cameroon": "AF", "Canada": "NA", "Cape Verde": "AF",
    "the Central African Republic": "AF", "Chad": "AF", "Chile": "SA", "China": "AS", "Colombia": "SA",
    "Comoros": "AF", "the Democratic Republic of the Congo": "AF", "the Republic of the Congo": "AF",
    "Costa Rica": "NA", "Côte d'Ivoire": "AF", "Croatia": "EU", "Cuba": "NA", "Cyprus": "AS EU",
    "the Czech Republic": "EU", "Denmark": "EU", "Dominica": "NA", "the Dominican Republic": "NA",
    "Ecuador": "SA", "Egypt": "AF AS", "El Salvador": "NA", "Equatorial Guinea": "AF", "Eritrea": "AF",
    "Estonia": "EU", "Eswatini": "AF", "Ethiopia": "AF", "Fiji": "OC", "Finland": "EU", "France": "EU",
    "Gabon": "AF", "the Gambia": "AF", "Georgia": "AS EU", "Germany": "EU", "Ghana": "AF", "Greece": "EU",
    "Grenada": "NA", "Guatemala": "NA", "Guinea": "AF", "Guyana": "SA", "Haiti": "NA", "Honduras": "NA",
    "Hungary": "EU", "Iceland": "EU", "India": "AS", "Indonesia": "AS", "Iran": "AS", "Iraq": "AS",
    "Ireland": "EU", "Italy": "EU", "Jamaica": "NA", "Japan": "AS", "Jordan": "AS", "Kazakhstan": "AS EU",
    "Kenya": "AF", "Kiribati": "OC", "Kuwait": "AS", "Kyrgyzstan": "AS", "Laos": "AS", "Latvia": "EU",
    "Lebanon": "AS", "Lesotho": "AF", "Liberia": "AF", "Libya": "AF", "Liechtenstein": "EU",
    "Lithuania": "EU", "Madagascar": "AF", "Malawi": "AF", "Malaysia": "AS", "the Maldives": "AS",
    "Mali": "AF", "Malta": "EU", "the Marshall Islands": "OC", "Mauritania": "AF", "Mauritius": "AF",
    "Mexico": "NA", "Micronesia": "OC", "Moldova": "EU", "Mongolia": "AS", "Montenegro": "EU",
    "Morocco": "AF", "Mozambique": "AF", "Myanmar": "AS", "Namibia": "AF", "Nepal": "AS",
    "the Netherlands": "EU", "New Zealand": "OC", "Nicaragua": "NA", "Niger": "AF", "Nigeria": "AF",
    "North Korea": "AS", "North Macedonia": "EU", "Norway": "EU", "Oman": "AS", "Pakistan": "AS",
    "Palau": "OC", "Panama": "NA", "Papua New Guinea": "OC", "Paraguay": "SA", "Peru": "SA",
    "the Philippines": "AS", "Poland": "EU", "Portugal": "EU", "Qatar": "AS", "Romania": "EU",
    "Russia": "EU AS", "Rwanda": "AF", "Saint Kitts and Nevis": "NA", "Saint Lucia": "NA",
    "Saint Vincent and the Grenadines": "NA", "Samoa": "OC", "Saudi Arabia": "AS", "Senegal": "AF",
    "Serbia": "EU", "Seychelles": "AF", "Sierra Leone": "AF", "Slovakia": "EU", "Slovenia": "EU",
    "the Solomon Islands": "OC", "Somalia": "AF", "South Africa": "AF", "South Korea": "AS",
    "South Sudan": "AF", "Spain": "EU", "Sri Lanka": "AS", "Sudan": "AF", "Suriname": "SA", "Sweden": "EU",
    "Switzerland": "EU", "Syria": "AS", "Taiwan": "AS", "Tajikistan": "AS", "Tanzania": "AF",
    "Thailand": "AS", "Timor-Leste": "AS OC", "Togo": "AF", "Tonga": "OC", "Trinidad and Tobago": "NA SA",
    "Tunisia": "AF", "Turkey": "AS EU", "Turkmenistan": "AS", "Tuvalu": "OC", "Uganda": "AF",
    "Ukraine": "EU", "the United Arab Emirates": "AS", "the United Kingdom": "EU", "the United States": "NA",
    "Uruguay": "SA", "Uzbekistan": "AS", "Vanuatu": "OC", "Venezuela": "SA", "Vietnam": "AS", "Yemen": "AS",
    "Zambia": "AF", "Zimbabwe": "AF",
}

CENTRAL_AMERICA = frozenset({"Belize", "Costa Rica", "El Salvador", "Guatemala", "Honduras", "Nicaragua", "Panama"})

#: Ways of asking; ``{}`` is the country.
PHRASINGS = ("Which continent is {} in?", "On which continent is {} located?", "What continent is {} on?",
             "{} lies on which continent?", "In which continent would you find {}?",
             "Name the continent where {} is.")


def continent_answers(country: str) -> list[str]:
    """Every answer credited for ``country``: its continent(s) and the conventions in the module docstring."""
    codes = CONTINENT_OF[country].split()
    answers = [_NAMES[code] for code in codes] + [_ADJECTIVES[code] for code in codes]
    if set(codes) == {"EU", "AS"}:
        answers.append("Eurasia")
    if country in CENTRAL_AMERICA:
        answers.append("Central America")
    if country == "Australia":
        answers.append("Australia")
    return answers


def continents_examples() -> list[Example]:
    """Six questions per country; a country's phrasings share a split (``meta["split_group"]``)."""
    examples: list[Example] = []
    for countries, _ in COUNTRIES:
        country = countries[0]
        answers = continent_answers(country)
        group = f"continents-{country_slug(country)}"
        for k, phrasing in enumerate(PHRASINGS):
            question = phrasing.format(country)
            if country[0].islower():  # "the Bahamas" opens a sentence as "The Bahamas"
                question = question[0].upper() + question[1:]
            if any(answered_in_question(question, (answer,)) for answer in answers):
                break  # the name gives the continent away in every phrasing
            examples.append(Example(
                id=f"{group}-p{k}", question=question, answers=answers, answer_type="short", source=SOURCE,
                meta={"subject": country, "continent": " ".join(_NAMES[c] for c in CONTINENT_OF[country].split()),
                      "phrasing": k, "split_group": group}))
    return examples
