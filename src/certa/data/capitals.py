"""``capitals``: world capitals asked both ways, generated from a hand-written table.

Each country gives two questions: "What is the capital of X?" and "Which
country has Y as its capital?". Questions whose answer could be matched by a
wrong answer are left out automatically (a reply "Equatorial Guinea" contains
"Guinea"), and so are those that give their answer away ("Guinea-Bissau" /
"Bissau"). Countries whose capital is disputed or recently moved in a way
sources disagree on (Israel, Burundi, Nauru) are not in the table.
"""

from __future__ import annotations

from ..records import Example
from .text import contains_phrase, normalize_text

# (country names, capital names): first name is canonical, the rest are accepted aliases.
# Where a country has several official capitals, all are accepted.
COUNTRIES: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("Afghanistan",), ("Kabul",)),
    (("Albania",), ("Tirana", "Tirane")),
    (("Algeria",), ("Algiers",)),
    (("Andorra",), ("Andorra la Vella",)),
    (("Angola",), ("Luanda",)),
    (("Antigua and Barbuda",), ("St. John's", "Saint John's", "St John's")),
    (("Argentina",), ("Buenos Aires",)),
    (("Armenia",), ("Yerevan",)),
    (("Australia",), ("Canberra",)),
    (("Austria",), ("Vienna", "Wien")),
    (("Azerbaijan",), ("Baku",)),
    (("the Bahamas", "Bahamas"), ("Nassau",)),
    (("Bahrain",), ("Manama",)),
    (("Bangladesh",), ("Dhaka", "Dacca")),
    (("Barbados",), ("Bridgetown",)),
    (("Belarus",), ("Minsk",)),
    (("Belgium",), ("Brussels", "Bruxelles")),
    (("Belize",), ("Belmopan",)),
    (("Benin",), ("Porto-Novo",)),
    (("Bhutan",), ("Thimphu",)),
    (("Bolivia",), ("Sucre", "La Paz")),
    (("Bosnia and Herzegovina", "Bosnia"), ("Sarajevo",)),
    (("Botswana",), ("Gaborone",)),
    (("Brazil",), ("Brasília", "Brasilia")),
    (("Brunei",), ("Bandar Seri Begawan",)),
    (("Bulgaria",), ("Sofia",)),
    (("Burkina Faso",), ("Ouagadougou",)),
    (("Cambodia",), ("Phnom Penh",)),
    (("Cameroon",), ("Yaoundé", "Yaounde")),
    (("Canada",), ("Ottawa",)),
    (("Cape Verde", "Cabo Verde"), ("Praia",)),
    (("the Central African Republic", "Central African Republic"), ("Bangui",)),
    (("Chad",), ("N'Djamena", "Ndjamena")),
    (("Chile",), ("Santiago",)),
    (("China",), ("Beijing", "Peking")),
    (("Colombia",), ("Bogotá", "Bogota")),
    (("Comoros",), ("Moroni",)),
    (("the Democratic Republic of the Congo", "DR Congo", "DRC", "Congo-Kinshasa"), ("Kinshasa",)),
    (("the Republic of the Congo", "Congo-Brazzaville"), ("Brazzaville",)),
    (("Costa Rica",), ("San José", "San Jose")),
    (("Côte d'Ivoire", "Ivory Coast"), ("Yamoussoukro",)),
    (("Croatia",), ("Zagreb",)),
    (("Cuba",), ("Havana", "La Habana")),
    (("Cyprus",), ("Nicosia",)),
    (("the Czech Republic", "Czechia"), ("Prague", "Praha")),
    (("Denmark",), ("Copenhagen",)),
    (("Dominica",), ("Roseau",)),
    (("the Dominican Republic", "Dominican Republic"), ("Santo Domingo",)),
    (("Ecuador",), ("Quito",)),
    (("Egypt",), ("Cairo",)),
    (("El Salvador",), ("San Salvador",)),
    (("Equatorial Guinea",), ("Malabo",)),
    (("Eritrea",), ("Asmara",)),
    (("Estonia",), ("Tallinn",)),
    (("Eswatini", "Swaziland"), ("Mbabane", "Lobamba")),
    (("Ethiopia",), ("Addis Ababa",)),
    (("Fiji",), ("Suva",)),
    (("Finland",), ("Helsinki",)),
    (("France",), ("Paris",)),
    (("Gabon",), ("Libreville",)),
    (("the Gambia", "Gambia"), ("Banjul",)),
    (("Georgia",), ("Tbilisi", "Tiflis")),
    (("Germany",), ("Berlin",)),
    (("Ghana",), ("Accra",)),
    (("Greece",), ("Athens",)),
    (("Grenada",), ("St. George's", "Saint George's", "St George's")),
    (("Guatemala",), ("Guatemala City",)),
    (("Guinea",), ("Conakry",)),
    (("Guyana",), ("Georgetown",)),
    (("Haiti",), ("Port-au-Prince",)),
    (("Honduras",), ("Tegucigalpa",)),
    (("Hungary",), ("Budapest",)),
    (("Iceland",), ("Reykjavík", "Reykjavik")),
    (("India",), ("New Delhi", "Delhi")),
    (("Indonesia",), ("Jakarta",)),
    (("Iran",), ("Tehran", "Teheran")),
    (("Iraq",), ("Baghdad",)),
    (("Ireland",), ("Dublin",)),
    (("Italy",), ("Rome", "Roma")),
    (("Jamaica",), ("Kingston",)),
    (("Japan",), ("Tokyo",)),
    (("Jordan",), ("Amman",)),
    (("Kazakhstan",), ("Astana", "Nur-Sultan")),
    (("Kenya",), ("Nairobi",)),
    (("Kiribati",), ("South Tarawa", "Tarawa")),
    (("Kuwait",), ("Kuwait City",)),
    (("Kyrgyzstan",), ("Bishkek",)),
    (("Laos",), ("Vientiane",)),
    (("Latvia",), ("Riga",)),
    (("Lebanon",), ("Beirut",)),
    (("Lesotho",), ("Maseru",)),
    (("Liberia",), ("Monrovia",)),
    (("Libya",), ("Tripoli",)),
    (("Liechtenstein",), ("Vaduz",)),
    (("Lithuania",), ("Vilnius",)),
    (("Madagascar",), ("Antananarivo",)),
    (("Malawi",), ("Lilongwe",)),
    (("Malaysia",), ("Kuala Lumpur", "Putrajaya")),
    (("the Maldives", "Maldives"), ("Malé", "Male")),
    (("Mali",), ("Bamako",)),
    (("Malta",), ("Valletta",)),
    (("the Marshall Islands", "Marshall Islands"), ("Majuro",)),
    (("Mauritania",), ("Nouakchott",)),
    (("Mauritius",), ("Port Louis",)),
    (("Mexico",), ("Mexico City",)),
    (("Micronesia",), ("Palikir",)),
    (("Moldova",), ("Chișinău", "Chisinau", "Kishinev")),
    (("Mongolia",), ("Ulaanbaatar", "Ulan Bator")),
    (("Montenegro",), ("Podgorica",)),
    (("Morocco",), ("Rabat",)),
    (("Mozambique",), ("Maputo",)),
    (("Myanmar", "Burma"), ("Naypyidaw", "Nay Pyi Taw", "Naypyitaw")),
    (("Namibia",), ("Windhoek",)),
    (("Nepal",), ("Kathmandu",)),
    (("the Netherlands", "Netherlands", "Holland"), ("Amsterdam",)),
    (("New Zealand",), ("Wellington",)),
    (("Nicaragua",), ("Managua",)),
    (("Niger",), ("Niamey",)),
    (("Nigeria",), ("Abuja",)),
    (("North Korea",), ("Pyongyang",)),
    (("North Macedonia", "Macedonia"), ("Skopje",)),
    (("Norway",), ("Oslo",)),
    (("Oman",), ("Muscat",)),
    (("Pakistan",), ("Islamabad",)),
    (("Palau",), ("Ngerulmud",)),
    (("Panama",), ("Panama City",)),
    (("Papua New Guinea",), ("Port Moresby",)),
    (("Paraguay",), ("Asunción", "Asuncion")),
    (("Peru",), ("Lima",)),
    (("the Philippines", "Philippines"), ("Manila",)),
    (("Poland",), ("Warsaw", "Warszawa")),
    (("Portugal",), ("Lisbon", "Lisboa")),
    (("Qatar",), ("Doha",)),
    (("Romania",), ("Bucharest",)),
    (("Russia", "Russian Federation"), ("Moscow",)),
    (("Rwanda",), ("Kigali",)),
    (("Saint Kitts and Nevis", "St. Kitts and Nevis"), ("Basseterre",)),
    (("Saint Lucia", "St. Lucia"), ("Castries",)),
    (("Saint Vincent and the Grenadines", "St. Vincent and the Grenadines"), ("Kingstown",)),
    (("Samoa",), ("Apia",)),
    (("Saudi Arabia",), ("Riyadh",)),
    (("Senegal",), ("Dakar",)),
    (("Serbia",), ("Belgrade", "Beograd")),
    (("Seychelles",), ("Victoria",)),
    (("Sierra Leone",), ("Freetown",)),
    (("Slovakia",), ("Bratislava",)),
    (("Slovenia",), ("Ljubljana",)),
    (("the Solomon Islands", "Solomon Islands"), ("Honiara",)),
    (("Somalia",), ("Mogadishu",)),
    (("South Africa",), ("Pretoria", "Cape Town", "Bloemfontein")),
    (("South Korea",), ("Seoul",)),
    (("South Sudan",), ("Juba",)),
    (("Spain",), ("Madrid",)),
    (("Sri Lanka",), ("Sri Jayawardenepura Kotte", "Kotte", "Colombo")),
    (("Sudan",), ("Khartoum",)),
    (("Suriname",), ("Paramaribo",)),
    (("Sweden",), ("Stockholm",)),
    (("Switzerland",), ("Bern", "Berne")),
    (("Syria",), ("Damascus",)),
    (("Taiwan",), ("Taipei",)),
    (("Tajikistan",), ("Dushanbe",)),
    (("Tanzania",), ("Dodoma",)),
    (("Thailand",), ("Bangkok",)),
    (("Timor-Leste", "East Timor"), ("Dili",)),
    (("Togo",), ("Lomé", "Lome")),
    (("Tonga",), ("Nuku'alofa", "Nukualofa")),
    (("Trinidad and Tobago",), ("Port of Spain",)),
    (("Tunisia",), ("Tunis",)),
    (("Turkey", "Türkiye", "Turkiye"), ("Ankara",)),
    (("Turkmenistan",), ("Ashgabat", "Ashkhabad")),
    (("Tuvalu",), ("Funafuti",)),
    (("Uganda",), ("Kampala",)),
    (("Ukraine",), ("Kyiv", "Kiev")),
    (("the United Arab Emirates", "United Arab Emirates", "UAE"), ("Abu Dhabi",)),
    (("the United Kingdom", "United Kingdom", "UK", "Britain", "Great Britain"), ("London",)),
    (("the United States", "United States", "United States of America", "USA"),
     ("Washington, D.C.", "Washington")),
    (("Uruguay",), ("Montevideo",)),
    (("Uzbekistan",), ("Tashkent",)),
    (("Vanuatu",), ("Port Vila",)),
    (("Venezuela",), ("Caracas",)),
    (("Vietnam", "Viet Nam"), ("Hanoi", "Ha Noi")),
    (("Yemen",), ("Sanaa", "Sana'a")),
    (("Zambia",), ("Lusaka",)),
    (("Zimbabwe",), ("Harare",)),
)

SOURCE = "certa:capitals"


def country_slug(name: str) -> str:
    """``the Czech Republic`` → ``czech-republic``: the part of an id that names a country."""
    return normalize_text(name).replace(" ", "-")


def _ambiguous(row: int, table: list[list[str]]) -> bool:
    """True when a wrong answer (another row's name) contains one of row ``row``'s names as whole words.

    ``table`` holds normalised names, so the quadratic scan stays cheap.
    """
    return any(f" {name} " in f" {other} " for name in table[row]
               for j, names in enumerate(table) if j != row for other in names)


def answered_in_question(question: str, aliases: tuple[str, ...]) -> bool:
    """True when ``question`` names every one of ``aliases`` (whole words): it gives its answer away."""
    return all(contains_phrase(question, alias) for alias in aliases)


#: Ways of asking each direction (``capitals-phrased``); ``{}`` is the country or the capital.
FORWARD_PHRASINGS = ("What is the capital of {}?", "Which city is the capital of {}?",
                     "Name the capital city of {}.", "The capital of {} is which city?")
REVERSE_PHRASINGS = ("Which country has {} as its capital?", "{} is the capital of which country?")


def phrased_capitals_examples() -> list[Example]:
    """Every country asked in several phrasings each way; all questions about a country share its split.

    Six questions per country (four forward, two reverse) make a set large enough
    for 300+ test answers; ``meta["split_group"]`` keeps a country's phrasings
    together, so a test question's fact is never seen in another phrasing in training.
    """
    examples: list[Example] = []
    for example in capitals_examples():
        relation, subject = example.meta["relation"], example.meta["subject"]
        phrasings = FORWARD_PHRASINGS if relation == "capital_of" else REVERSE_PHRASINGS
        group = example.id.rsplit("-", 1)[0]
        for k, phrasing in enumerate(phrasings):
            question = phrasing.format(subject)
            if answered_in_question(question, tuple(example.answers)):
                continue
            examples.append(Example(
                id=f"{example.id}-p{k}", question=question, answers=list(example.answers), answer_type="short",
                source=SOURCE, meta={**example.meta, "phrasing": k, "split_group": group}))
    return examples


def capitals_examples() -> list[Example]:
    """All capital questions, forward (country → capital) then reverse (capital → country)."""
    examples: list[Example] = []
    capital_table = [[normalize_text(c) for c in capitals] for _, capitals in COUNTRIES]
    country_table = [[normalize_text(c) for c in countries] for countries, _ in COUNTRIES]
    for i, (countries, capitals) in enumerate(COUNTRIES):
        country, capital = countries[0], capitals[0]
        slug = country_slug(country.removeprefix("the "))
        forward = f"What is the capital of {country}?"
        if not answered_in_question(forward, capitals) and not _ambiguous(i, capital_table):
            examples.append(Example(
                id=f"capitals-{slug}-capital", question=forward, answers=list(capitals),
                answer_type="short", source=SOURCE, meta={"relation": "capital_of", "subject": country}))
        reverse = f"Which country has {capital} as its capital?"
        if not answered_in_question(reverse, countries) and not _ambiguous(i, country_table):
            examples.append(Example(
                id=f"capitals-{slug}-country", question=reverse, answers=list(countries),
                answer_type="short", source=SOURCE, meta={"relation": "country_of", "subject": capital}))
    return examples
